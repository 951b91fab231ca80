"""What another user can plant or run cannot be used against kproc (SPEC §5
"Shared state is created 0600 and is not reachable by other users").

Paths in shared folders (issue #11, defect 11): a fake sysfs tree and a trace
file usually go under /tmp, where another user may have planted a folder or a
symlink first; kproc must never write through them (as root that overwrites
root's own files).  Another user's arena (defect 15): root's ``kproc ps``
reads the arenas of every user, so a fake "kthreadd" with a crafted arena must
neither crash nor hang it.

The "another user" is ``nobody`` when the tests run as root (the tree is
chowned to it, the fake kthreadd runs as it); otherwise the planted things are
our own, which still checks the symlink and arena cases.
"""

import json
import os
import pwd
import struct
import subprocess
import sys
import textwrap

import pytest

import kproc
from kproc._core import layout as L
from kproc._core.arena import ArenaParams, marker_slots

pytestmark = pytest.mark.timeout(60)

ROOT = os.geteuid() == 0
NOBODY = pwd.getpwnam("nobody").pw_uid if ROOT else None
as_root = pytest.mark.skipif(not ROOT, reason="chowning a tree to nobody needs root")
VICTIM_TEXT = "root's secret, mode 0600\n"
# The fake kthreadd needs no kproc: any interpreter nobody may run.
PLAIN_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


@pytest.fixture
def victim(tmp_path):
    """A 0600 file of ours that a planted link points at; it must stay as it is."""
    path = tmp_path / "victim"
    path.write_text(VICTIM_TEXT)
    path.chmod(0o600)
    return path


def _planted_tree(base, victim):
    """A fake tree as another user would plant it: real folders, the files
    kproc writes replaced by symlinks to ``victim``."""
    cpu = base / "devices/system/cpu"
    (cpu / "cpu1").mkdir(parents=True)
    (base / ".kproc-fake-sysfs").write_text("made by kproc.fake_sysfs\n")
    for rel in ("possible", "online", "cpu1/online"):
        (cpu / rel).symlink_to(victim)
    return base


def _chown_tree(path, uid):
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, uid, uid)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)


@as_root
def test_fake_sysfs_refuses_a_tree_another_user_owns(tmp_path, victim):
    """A tree chowned to nobody is refused before anything is written in it."""
    tree = _planted_tree(tmp_path / "tree", victim)
    _chown_tree(tree, NOBODY)
    with pytest.raises(PermissionError, match="owned by uid"):
        kproc.fake_sysfs(tree, possible=2)
    assert victim.read_text() == VICTIM_TEXT


def test_fake_sysfs_never_writes_through_planted_file_links(tmp_path, victim):
    """Files where the tree's files go are replaced (O_EXCL after unlink), never
    written through: the link's target keeps its contents."""
    tree = _planted_tree(tmp_path / "tree", victim)
    kproc.fake_sysfs(tree, possible=2)
    assert victim.read_text() == VICTIM_TEXT
    possible = tree / "devices/system/cpu/possible"
    assert not possible.is_symlink() and possible.read_text() == "0-1\n"
    assert (possible.stat().st_mode & 0o777) == 0o600


def test_fake_sysfs_refuses_a_symlinked_folder(tmp_path, victim):
    """A folder of the tree that is a symlink (to a folder of ours) is refused."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / ".kproc-fake-sysfs").write_text("made by kproc.fake_sysfs\n")
    (tree / "devices").symlink_to(elsewhere)
    with pytest.raises(PermissionError, match="symbolic link"):
        kproc.fake_sysfs(tree, possible=2)
    assert os.listdir(elsewhere) == []


def test_fake_sysfs_refuses_a_folder_others_may_write(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    tree.chmod(0o777)
    with pytest.raises(PermissionError, match="others may write"):
        kproc.fake_sysfs(tree, possible=2)


def test_fake_sysfs_makes_its_folders_0700_and_files_0600(tmp_path):
    tree = kproc.fake_sysfs(tmp_path / "new" / "tree", possible=2)
    for dirpath, dirnames, filenames in os.walk(tree):
        assert os.stat(dirpath).st_mode & 0o777 == 0o700, dirpath
        for name in filenames:
            assert os.stat(os.path.join(dirpath, name)).st_mode & 0o777 == 0o600, name


def test_hotplug_on_a_fake_tree_never_writes_through_a_planted_online_link(tmp_path):
    """cpu_down() writes cpuN/online of the tree anew: a link put there after the
    tree was built is replaced, not followed."""
    victim = tmp_path / "looks-online"
    victim.write_text("1\n")
    tree = kproc.fake_sysfs(tmp_path / "tree", possible=2)
    online = os.path.join(tree, "devices/system/cpu/cpu1/online")
    os.unlink(online)
    os.symlink(victim, online)
    with kproc.start(sysfs_root=tree):
        assert kproc.cpu_down(1) == 0
        assert not os.path.islink(online)
        assert kproc.cpu_up(1) == 0
    assert victim.read_text() == "1\n"


def test_trace_refuses_an_events_folder_that_is_a_symlink(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "run.json.d").symlink_to(elsewhere)
    with pytest.raises(PermissionError, match="symbolic link"):
        kproc.start(trace=str(tmp_path / "run.json"))
    assert os.listdir(elsewhere) == []


@as_root
def test_trace_refuses_an_events_folder_of_another_user(tmp_path):
    planted = tmp_path / "run.json.d"
    planted.mkdir()
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(PermissionError, match="owned by uid"):
        kproc.start(trace=str(tmp_path / "run.json"))
    assert os.listdir(planted) == []


def test_trace_file_replaces_a_planted_link_instead_of_writing_through(tmp_path, victim):
    path = tmp_path / "run.json"
    path.symlink_to(victim)
    with kproc.start(trace=str(path)):
        pass
    assert victim.read_text() == VICTIM_TEXT
    assert not path.is_symlink() and "traceEvents" in json.loads(path.read_text())
    assert path.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "run.json.d").exists()


# -- another user's arena, read by kproc ps ---------------------------------------

FAKE_KTHREADD = textwrap.dedent("""
    import os, sys
    spec, fd = sys.argv[1], int(sys.argv[-1].split("=")[1])
    with open("/proc/self/comm", "w") as f:
        f.write("kthreadd")
    if spec == "fifo":
        src = int(sys.argv[2])          # a FIFO opened by the test, passed down
    else:
        size, pokes = eval(spec)            # (file size, [(offset, bytes)])
        src = os.memfd_create("kproc-arena")
        os.ftruncate(src, size)
        for off, data in pokes:
            os.pwrite(src, data, off)
    os.dup2(src, fd, inheritable=True)
    print("ready", flush=True)
    sys.stdin.read()
""")


def _header(max_kthreads, max_works):
    H = L.HEADER
    raw = bytearray(H.size)
    for name, value in (("magic", L.MAGIC), ("layout_version", L.LAYOUT_VERSION),
                        ("max_kthreads", max_kthreads),
                        ("max_works", max_works + marker_slots(max_kthreads)),
                        ("max_completions", max(1024, max_works)), ("backend", 1)):
        struct.pack_into(H.codes[name], raw, getattr(H, name), value)
    return bytes(raw)


def _pokes_looping_timer_lists(max_kthreads, max_works):
    """Every worker in use, its timer list a work whose next is itself, expired."""
    params = ArenaParams(max_kthreads, max(1024, max_works), max_works)
    K, W = L.WORKER, L.WORK
    pokes = [(0, _header(max_kthreads, max_works))]
    for idx in range(max_kthreads):
        base = params.workers + idx * K.stride
        for name, value in (("inuse", 1), ("task", idx + 1), ("thead", 1)):
            pokes.append((base + getattr(K, name), struct.pack(K.codes[name], value)))
    pokes.append((params.works + W.next, struct.pack(W.codes["next"], 1)))
    return params.size, pokes


def _crafted_arenas():
    return {
        # table sizes far beyond the file: struct.error from an unchecked read
        "tables past the end": repr((8192, [(0, _header(1 << 16, 1 << 22))])),
        # a list that never ends: a loop of tens of seconds per worker
        "looping timer lists": repr(_pokes_looping_timer_lists(64, 1 << 22)),
        # a FIFO at the arena's fd: opening it for reading blocks forever
        "fifo": "fifo",
    }


@pytest.mark.parametrize("case", ["tables past the end", "looping timer lists", "fifo"])
def test_kproc_ps_survives_a_crafted_arena_of_another_user(tmp_path, case):
    """A process of another user posing as kthreadd, its arena crafted: root's
    ``kproc ps`` leaves it out and lists the rest, promptly."""
    spec = _crafted_arenas()[case]
    os.mkfifo(tmp_path / "fifo", 0o600)
    fifo = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)   # no writer: opening blocks
    argv = [PLAIN_PYTHON, "-I", "-c", FAKE_KTHREADD, spec, str(fifo),
            "kproc._kthread.kthreadd", "--arena=7"]
    fake = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            user=NOBODY, pass_fds=(fifo,))
    os.close(fifo)
    try:
        assert fake.stdout.readline() == "ready\n", f"the fake kthreadd failed ({case})"
        with kproc.start() as rt:
            out = subprocess.run([sys.executable, "-m", "kproc", "ps", "--json"],
                                 capture_output=True, text=True, timeout=20)
            assert out.returncode == 0, out.stderr
            assert "Traceback" not in out.stderr
            listed = [r["kthreadd"] for r in json.loads(out.stdout)]
            assert rt.kthreadd_pid in listed and fake.pid not in listed
    finally:
        fake.stdin.close()
        fake.wait(10)
        fake.stdout.close()

"""``fake_sysfs()``: build a sysfs-like CPU tree for ``start(sysfs_root=...)``.

The tree is read by :class:`~kproc._core.topology.Topology` like the real
``/sys/devices/system/{cpu,node}``.  Two things guard the builder:

* **bounds**: CPU and node numbers are checked one by one against
  ``MAX_CPUS`` (the width of the arena's masks) before anything is built, so a
  tree is never made that ``start()`` would refuse, and no argument makes it
  do work beyond that bound (an endless iterable is cut off and refused);
* **paths** (through ``safefs``): the tree is usually under ``/tmp``, where
  another user may have planted folders or symlinks first.  Its folders must
  be this user's and writable by nobody else (made 0700), its files are made
  anew 0600 with ``O_EXCL | O_NOFOLLOW``, so root building a tree never writes
  through someone else's link.

Runs in whichever process calls it (usually before ``start()``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from . import safefs
from .checks import check_int
from .topology import MAX_CPUS, format_cpulist

__all__ = ["fake_sysfs", "FAKE_MARKER"]

FAKE_MARKER = ".kproc-fake-sysfs"


def _cpus(name: str, value: object, *, count_ok: bool = False) -> frozenset[int]:
    """``value`` as a set of CPU numbers in [0, MAX_CPUS); an int n means 0..n-1
    where ``count_ok``.  Raises: TypeError, ValueError naming ``name``."""
    if count_ok and isinstance(value, int) and not isinstance(value, bool):
        return frozenset(range(check_int(name, value, 1, MAX_CPUS)))
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        what = "an int or " if count_ok else ""
        raise TypeError(f"{name} must be {what}an iterable of CPU numbers, not "
                        f"{type(value).__name__}")
    cpus: set[int] = set()
    for n, cpu in enumerate(value):
        if n >= 4 * MAX_CPUS:
            raise ValueError(f"{name} names more than {4 * MAX_CPUS} CPUs")
        cpus.add(check_int(f"a CPU of {name}", cpu, 0, MAX_CPUS - 1))
    return frozenset(cpus)


def _nodes(value: object, possible: frozenset[int]) -> dict[int, frozenset[int]]:
    if value is None:
        return {0: possible}
    if not isinstance(value, Mapping):
        raise TypeError(f"nodes must be a mapping {{node: CPUs}}, not {type(value).__name__}")
    if len(value) > MAX_CPUS:
        raise ValueError(f"nodes names more than {MAX_CPUS} nodes")
    nodes = {check_int("a node of nodes", n, 0, MAX_CPUS - 1): _cpus(f"the CPUs of node {n}", c)
             for n, c in value.items()}
    covered = [c for cpus in nodes.values() for c in cpus]
    if sorted(covered) != sorted(possible):
        raise ValueError("nodes must hold every possible CPU exactly once")
    return nodes


def _tree_files(possible: frozenset[int], online: frozenset[int],
                nodes: Mapping[int, frozenset[int]], isolated: frozenset[int],
                nohz_full: frozenset[int]) -> dict[str, str]:
    """{path inside the tree: contents} of every file of the tree."""
    cpu, node = "devices/system/cpu", "devices/system/node"
    files = {
        FAKE_MARKER: "made by kproc.fake_sysfs\n",
        f"{cpu}/possible": format_cpulist(possible) + "\n",
        f"{cpu}/present": format_cpulist(possible) + "\n",
        f"{cpu}/online": format_cpulist(online) + "\n",
        f"{cpu}/isolated": format_cpulist(isolated) + "\n",
        f"{cpu}/nohz_full": (format_cpulist(nohz_full) or "(null)") + "\n",
        f"{cpu}/kernel_max": f"{max(possible)}\n",
        f"{node}/possible": format_cpulist(nodes) + "\n",
        f"{node}/online": format_cpulist(nodes) + "\n",
    }
    for c in sorted(possible - {0}):
        files[f"{cpu}/cpu{c}/online"] = "1\n" if c in online else "0\n"
    for n, cpus in nodes.items():
        files[f"{node}/node{n}/cpulist"] = format_cpulist(cpus) + "\n"
    return files


def _write_tree(root_fd: int, root: str, files: Mapping[str, str], dirs: Iterable[str]) -> None:
    """Write ``files`` (and make ``dirs``) under the checked folder ``root_fd``."""
    opened: dict[str, int] = {"": root_fd}

    def folder(rel: str) -> int:
        if rel not in opened:
            parent, name = os.path.split(rel)
            pfd = folder(parent)
            try:
                os.mkdir(name, 0o700, dir_fd=pfd)
            except FileExistsError:
                pass
            fd = safefs.open_component(pfd, name, f"{root}/{rel}")
            opened[rel] = fd
            safefs.check_own_dir(fd, f"{root}/{rel}")
        return opened[rel]

    try:
        for rel in dirs:
            folder(rel)
        for rel, text in files.items():
            parent, name = os.path.split(rel)
            safefs.write_new(folder(parent), name, text.encode(), os.path.join(root, parent))
    finally:
        for rel, fd in opened.items():
            if rel:
                os.close(fd)


def fake_sysfs(path: str | os.PathLike[str], *, possible: int | Iterable[int],
               online: Iterable[int] | None = None,
               nodes: Mapping[int, Iterable[int]] | None = None, isolated: Iterable[int] = (),
               nohz_full: Iterable[int] = ()) -> str:
    """Build a sysfs-like CPU tree in ``path`` for ``start(sysfs_root=path)``.

    @possible: CPU numbers, or an int n for CPUs 0..n-1 (at most MAX_CPUS, 1024).
    @online: CPUs online (default: all possible; cpu0 always is).  @nodes:
    {node: cpus} covering each possible CPU exactly once (default {0: possible}).
    @isolated, @nohz_full: CPUs excluded from housekeeping.
    Context: any.  Return: ``path`` (absolute).
    Raises: TypeError / ValueError naming the bad argument (before anything is
    written); ValueError for a non-empty folder that is not a fake tree;
    PermissionError for a folder of another user, one others may write, or a
    symlink where the tree goes.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a folder path, not {type(path).__name__}")
    possible = _cpus("possible", possible, count_ok=True)
    if not possible:
        raise ValueError("possible must name at least one CPU")
    if 0 not in possible:
        raise ValueError("CPU 0 must be possible (it is never hot-pluggable)")
    online_set = possible if online is None else _cpus("online", online) | {0}
    masks = {"online": online_set, "isolated": _cpus("isolated", isolated),
             "nohz_full": _cpus("nohz_full", nohz_full)}
    for name, mask in masks.items():
        if not mask <= possible:
            raise ValueError(f"{name} CPUs {sorted(mask - possible)} are not possible")
    node_map = _nodes(nodes, possible)
    path = os.path.abspath(os.fspath(path))
    root_fd = safefs.open_own_dir(path)
    try:
        list_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
        try:
            names = os.listdir(list_fd)
        finally:
            os.close(list_fd)
        if names and FAKE_MARKER not in names:
            raise ValueError(f"{path} is not empty and is not a fake sysfs tree")
        files = _tree_files(possible, online_set, node_map, masks["isolated"],
                            masks["nohz_full"])
        _write_tree(root_fd, path, files, ["devices/system/cpu/cpu0"])
    finally:
        os.close(root_fd)
    return path

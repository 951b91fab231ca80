"""``python benchmarks/dirty.py``: what a child of kthreadd dirties, step by step (issue #12).

Run as root, under the test lock.  kthreadd preloads ``dirty_hook``, so each child stops
itself (SIGSTOP) at checkpoints of its life (after fork, after its reseed, the spare's
wait, the claim, ``read_blob``, the unpickling, the publish, the first wake-up, node
affinity, the park); this process reads the stopped child's ``/proc/PID/smaps``
(Private_Dirty, per mapping kind) and continues it.  Sleeping states (a spare ready, a
never-woken kthread, a parked one) are read while the child sleeps.  kthreadd itself and
a plain ``os.fork`` child of this process are read for comparison.  ``KPROC_SPARES=1`` so
the one spare is the one followed.

Prints one table: each checkpoint's Private_Dirty (KiB) and the increase over the one
before, split into heap (``[heap]`` and anonymous: the Python heap), the interpreter's
own data (libpython / python binary), stack and the rest; then, from
``/proc/PID/pagemap`` (page frame numbers: root), the pages the child holds alone split
into "own" (it wrote them since its first checkpoint: their frame changed, copy on
write) and "rest" (held alone since that checkpoint, or kthreadd wrote them since and
took the copy).  The hook's own checkpoints cost ~100 KiB (row 0).
"""

import array
import os
import signal
import sys
import tempfile
import threading
import time

os.environ["KPROC_SPARES"] = "1"
TAGS = tempfile.NamedTemporaryFile(prefix="kproc-dirty-", delete=False)
os.environ["KPROC_DIRTY_TAGS"] = TAGS.name

import kproc  # noqa: E402
from bare_fns import noop  # noqa: E402


def kind(path):
    if path in ("", "[heap]") or path.startswith("[anon"):
        return "heap"
    if "python" in os.path.basename(path) and (".so" in path or "/bin/" in path):
        return "python"
    if path == "[stack]":
        return "stack"
    return "other"


def smaps(pid):
    """{kind: Private_Dirty KiB} and the total, of ``pid``; also the top mappings."""
    out = {"heap": 0, "python": 0, "stack": 0, "other": 0}
    per = {}
    path = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and not head[0].endswith(":"):
                path = head[5].strip() if len(head) > 5 else ""
                rng = head[0]
            elif head[0] == "Private_Dirty:":
                kb = int(head[1])
                out[kind(path)] += kb
                if kb:
                    per[(path or "anon") + " " + rng] = kb
    out["total"] = sum(out[k] for k in ("heap", "python", "stack", "other"))
    return out, per


def pagemap(pid):
    """{virtual page: (pfn, exclusive)} of every present private-able page of ``pid``
    (the arena memfd, shared by all, is left out)."""
    pages = {}
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pm:
        for line in maps:
            parts = line.split(None, 5)
            if len(parts) > 5 and "memfd:" in parts[5]:
                continue
            lo, hi = (int(x, 16) >> 12 for x in parts[0].split("-"))
            if hi - lo > 1 << 20:
                continue
            pm.seek(lo * 8)
            words = array.array("Q")
            words.frombytes(pm.read((hi - lo) * 8))
            for i, w in enumerate(words):
                if w >> 63:
                    pages[lo + i] = (w & ((1 << 55) - 1), (w >> 56) & 1)
    return pages


def state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def children(ppid):
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == ppid:
                        pids.append(int(name))
            except (OSError, ValueError):
                pass
    return pids


class Watcher(threading.Thread):
    """Reads every stopped child of kthreadd, then continues it."""

    def __init__(self, kpid):
        super().__init__(daemon=True)
        self.kpid, self.rows, self.halt = kpid, [], False
        self.lock = threading.Lock()
        self.base = {}      # pid -> its pages at its first checkpoint
        self.prev = {}      # pid -> its pages at its previous checkpoint
        self.own = {}       # pid -> pages it wrote (or allocated) itself

    def track(self, pid):
        """Attribute ``pid``'s pages: its PFN changed (or the page is new) since its
        previous checkpoint: it wrote the page (copy-on-write gave it a copy).  A page
        it holds alone with the PFN it had at its first checkpoint is one kthreadd
        wrote since (kthreadd took the copy), or one it held alone at that first
        checkpoint (written by the fork's return, or by kthreadd after the fork)."""
        now = pagemap(pid)
        if pid not in self.prev:
            self.base[pid] = now
            self.own[pid] = set()
        before = self.prev.get(pid, self.base[pid])
        own = self.own[pid]
        for va, (pfn, _) in now.items():
            old = before.get(va)
            if old is None or old[0] != pfn:
                own.add(va)
        self.prev[pid] = now
        excl = [va for va, (_, x) in now.items() if x]
        mine = sum(1 for va in excl if va in own)
        self.rows[-1] = self.rows[-1] + (mine * 4, (len(excl) - mine) * 4)

    def last_tag(self, pid):
        tag = None
        with open(TAGS.name, "rb") as f:
            for line in f:
                p, t = line.split()
                if int(p) == pid:
                    tag = t.decode()
        return tag

    def snap(self, pid, tag):
        with self.lock:
            self.rows.append((pid, tag, *smaps(pid)))
            self.track(pid)

    def run(self):
        while not self.halt:
            for pid in children(self.kpid):
                try:
                    if state(pid) == "T":
                        self.snap(pid, self.last_tag(pid))
                        os.kill(pid, signal.SIGCONT)
                except OSError:
                    pass
            time.sleep(0.002)


def sleeping(pid, settle=0.3):
    """Wait until ``pid`` sleeps (and has for ``settle`` s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if state(pid) == "S":
            time.sleep(settle)
            if state(pid) == "S":
                return
        time.sleep(0.01)
    raise TimeoutError(pid)


def spare_of(kpid, exclude=()):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for pid in children(kpid):
            if pid in exclude:
                continue
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "kproc-spare":
                    return pid
        time.sleep(0.01)
    raise TimeoutError("no spare")


def main():
    rows = []
    rt = kproc.start(preload=["dirty_hook"])
    try:
        kpid = rt.kthreadd_pid
        watch = Watcher(kpid)
        watch.start()
        # A warm-up kthread first: kthreadd imports this module, spares are refreshed.
        kproc.kthread_stop(kproc.kthread_run(noop, None, "warm"))
        time.sleep(0.5)
        spare = spare_of(kpid)
        sleeping(spare)
        watch.snap(spare, "8-spare-ready")
        rows.append((kpid, "kthreadd", *smaps(kpid)))
        task = kproc.kthread_create(noop, None, "dirty")
        assert task.pid == spare, (task.pid, spare)
        sleeping(task.pid)
        watch.snap(task.pid, "8-never-woken")
        kproc.kthread_park(task)
        sleeping(task.pid)
        watch.snap(task.pid, "b-parked")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        sleeping(pid)
        plain = (pid, "plain-fork-child", *smaps(pid))
        os.close(w)
        os.waitpid(pid, 0)
        rows.append((os.getpid(), "caller", *smaps(os.getpid())))
        kproc.kthread_stop(task)
        watch.halt = True
        watch.join()
        rows += [row for row in watch.rows if row[0] == spare]
    finally:
        rt.shutdown()
        os.unlink(TAGS.name)
    mine = [r for r in rows if r[0] == spare]
    others = [r for r in rows if r[0] != spare] + [plain]
    cols = ("total", "heap", "python", "stack", "other")
    print(f"{'checkpoint (spare pid %d)' % spare:34}" + "".join(f"{c:>9}" for c in cols)
          + "   Δ total  Δ heap Δ python   own   rest")
    prev = None
    for _, tag, d, _per, own, theirs in mine:
        line = f"{tag:34}" + "".join(f"{d[c]:9}" for c in cols)
        if prev:
            line += f"  {d['total'] - prev['total']:+8} {d['heap'] - prev['heap']:+7}" \
                    f" {d['python'] - prev['python']:+8}"
        else:
            line += " " * 26
        line += f" {own:6} {theirs:8}"
        print(line)
        prev = d
    for _, tag, d, _per in others:
        print(f"{tag:34}" + "".join(f"{d[c]:9}" for c in cols))
    if "-v" in sys.argv:
        for _, tag, _d, per, *_ in mine[-1:] + others:
            print(tag)
            for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:12]:
                print(f"   {v:6} {k}")


if __name__ == "__main__":
    main()

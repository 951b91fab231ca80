"""CPU topology from sysfs (kernel: cpu_possible_mask, cpu_present_mask,
cpu_online_mask, housekeeping_cpumask(HK_TYPE_KTHREAD), cpu_to_node,
cpumask_of_node) and the fake sysfs trees kproc can run on.

Everything is read from ``{sysfs_root}/devices/system/{cpu,node}`` on every
call: nothing is cached, because CPU hotplug (by kproc or by anyone else)
changes the masks underneath.  Reads are a handful of small files.

A *fake tree* (``fake_sysfs()``, in ``fakesys``) is a folder laid out like sysfs, for
machines where hotplug is not allowed and for experiments with more CPUs or
nodes than the host has.  On a fake tree the online mask is derived from the
per-CPU ``cpuN/online`` files (cpu0, which has none, is always online), so a
shell writing ``0 > cpu3/online`` is seen exactly as on real sysfs.  CPUs of a
fake tree that the host lacks are *modelled*: masks naming them are recorded
but only the part that exists and is online here is applied
(:meth:`Topology.applicable`).
"""

from __future__ import annotations

import errno
import os
import time

from . import safefs
from .layout import CPUMASK_BYTES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Set

__all__ = ["Topology", "parse_cpulist", "format_cpulist", "REAL_ROOT", "MAX_CPUS"]

REAL_ROOT = "/sys"
# CPUs kproc can name: the arena's masks are CPUMASK_BYTES wide (CONFIG_NR_CPUS).
MAX_CPUS = CPUMASK_BYTES * 8
# No cpulist read from a tree is expanded past this (a hostile "0-4294967295").
CPULIST_LIMIT = 1 << 16


def parse_cpulist(text: str) -> frozenset[int]:
    """Parse the kernel's cpulist format ("0-3,5,8-11:2/4") into a frozenset.

    Empty text and "(null)" give the empty set.  Raises: ValueError on garbage.
    """
    text = text.strip()
    if not text or text == "(null)":
        return frozenset()
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            rng, _, stride = part.partition(":")
            first, _, last = rng.partition("-")
            lo, hi = int(first), int(last) if last else int(first)
            if lo < 0 or hi < lo or hi >= CPULIST_LIMIT:
                raise ValueError(part)
            if stride:
                used_text, _, group_text = stride.partition("/")
                used, group = int(used_text), int(group_text)
                cpus.update(c for c in range(lo, hi + 1) if (c - lo) % group < used)
            else:
                cpus.update(range(lo, hi + 1))
    except ValueError:
        raise ValueError(f"not a CPU list: {text!r}") from None
    return frozenset(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """Format CPUs as the kernel does ("0-3,5")."""
    ordered = sorted(cpus)
    out: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


# A sysfs read racing a CPU hotplug can fail for a moment (seen: EPERM from a node's
# cpulist while stress-ng --cpu-online runs); such reads are retried.
_TRANSIENT = (errno.EPERM, errno.EBUSY, errno.EAGAIN, errno.EINTR)
READ_RETRIES = 20


READ_CHUNK = 1 << 16


def _read_once(path: str) -> str:
    """The file's text from one read(2) at offset 0 while it fits READ_CHUNK.

    ``nodeN/cpulist`` is a binary attribute (drivers/base/node.c): each read
    formats the mask anew, so reading on to EOF, as ``f.read()`` does, joined
    "0\n" and the tail "1\n" of "0-1\n" when CPU 1 came up in between.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, READ_CHUNK)]
        while len(chunks[-1]) == READ_CHUNK:
            chunks.append(os.read(fd, READ_CHUNK))
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def _read(path: str, default: str | None = None) -> str:
    attempts = 0
    while True:
        try:
            return _read_once(path)
        except FileNotFoundError:
            if default is None:
                raise
            return default
        except OSError as exc:
            attempts += 1
            if exc.errno not in _TRANSIENT or attempts == READ_RETRIES:
                raise
            time.sleep(0.0005 * attempts)


class Topology:
    """The CPU topology under ``sysfs_root`` (default ``/sys``); see module doc."""

    def __init__(self, sysfs_root: str | os.PathLike[str] = REAL_ROOT) -> None:
        self.root = os.path.abspath(os.fspath(sysfs_root))
        self.cpu_dir = os.path.join(self.root, "devices/system/cpu")
        self.node_dir = os.path.join(self.root, "devices/system/node")
        self.is_fake = self.root != REAL_ROOT

    def _mask(self, name: str) -> frozenset[int]:
        return parse_cpulist(_read(os.path.join(self.cpu_dir, name), ""))

    def possible(self) -> frozenset[int]:
        """cpu_possible_mask."""
        return self._mask("possible")

    def present(self) -> frozenset[int]:
        """cpu_present_mask (possible, when the file is missing)."""
        return self._mask("present") or self.possible()

    def online(self) -> frozenset[int]:
        """cpu_online_mask (on a fake tree: from the per-CPU online files)."""
        if not self.is_fake:
            return self._mask("online")
        return frozenset(c for c in self.possible() if self.is_online(c))

    def isolated(self) -> frozenset[int]:
        return self._mask("isolated")

    def nohz_full(self) -> frozenset[int]:
        return self._mask("nohz_full")

    def online_file(self, cpu: int) -> str:
        return os.path.join(self.cpu_dir, f"cpu{cpu}", "online")

    def hotpluggable(self, cpu: int) -> bool:
        """True if ``cpu`` has an ``online`` file (cpu0 often has none)."""
        return os.path.exists(self.online_file(cpu))

    def is_online(self, cpu: int) -> bool:
        """Whether ``cpu`` is online (a CPU without an online file is)."""
        if not self.is_fake:
            return cpu in self._mask("online")
        text = _read(self.online_file(cpu), "1")
        return text.strip() == "1" and cpu in self.possible()

    def housekeeping(self, allowed: Set[int] | None = None) -> frozenset[int]:
        """housekeeping_cpumask(HK_TYPE_KTHREAD): online − isolated − nohz_full,
        ∩ ``allowed``; falls back to online ∩ allowed, then online, if empty."""
        online = self.online()
        hk = online - self.isolated() - self.nohz_full()
        if allowed is not None:
            return (hk & allowed) or (online & allowed) or online
        return hk or online

    def nodes(self) -> dict[int, frozenset[int]]:
        """NUMA nodes: {node: cpus}.  Without a node directory, node 0 = possible."""
        nodes: dict[int, frozenset[int]] = {}
        try:
            names = os.listdir(self.node_dir)
        except FileNotFoundError:
            names = []
        for name in names:
            if name.startswith("node") and name[4:].isdigit():
                nodes[int(name[4:])] = parse_cpulist(
                    _read(os.path.join(self.node_dir, name, "cpulist"), ""))
        return nodes or {0: self.possible()}

    def cpu_to_node(self, cpu: int) -> int:
        """cpu_to_node(): the node holding ``cpu`` (0 if none says)."""
        for node, cpus in sorted(self.nodes().items()):
            if cpu in cpus:
                return node
        return 0

    def cpumask_of_node(self, node: int) -> frozenset[int]:
        """cpumask_of_node(): CPUs of ``node``; NUMA_NO_NODE (-1) → cpu_online_mask.

        Raises: ValueError for a node that does not exist.
        """
        if node == -1:
            return self.online()
        nodes = self.nodes()
        if node not in nodes:
            raise ValueError(f"node {node} does not exist (nodes: {sorted(nodes)})")
        return nodes[node]

    @staticmethod
    def host_cpus() -> frozenset[int]:
        """CPUs this host really has (real sysfs), whatever the tree."""
        return parse_cpulist(_read(os.path.join(REAL_ROOT, "devices/system/cpu/possible"),
                                   "")) or frozenset(range(os.cpu_count() or 1))

    @staticmethod
    def host_online() -> frozenset[int]:
        return parse_cpulist(_read(os.path.join(REAL_ROOT, "devices/system/cpu/online"), ""))

    def usable(self) -> frozenset[int]:
        """The CPUs ``os.sched_setaffinity`` can be given here: those that exist
        and are online on the host (and in this tree)."""
        usable = self.host_online()
        if self.is_fake:
            usable &= self.online() | (self.host_cpus() - self.possible())
        return usable

    def applicable(self, mask: Iterable[int]) -> frozenset[int]:
        """The part of ``mask`` that ``os.sched_setaffinity`` can be given here."""
        return frozenset(mask) & self.usable()

    def check_possible(self, cpu: object) -> None:
        """Raise ValueError/TypeError unless ``cpu`` is a possible CPU number."""
        if isinstance(cpu, bool) or not isinstance(cpu, int):
            raise TypeError(f"a CPU number must be an int, not {type(cpu).__name__}")
        possible = self.possible()
        if cpu not in possible:
            raise ValueError(f"CPU {cpu} is not possible on this system "
                             f"(possible: {format_cpulist(possible)})")

    def check_hotpluggable(self, cpu: int) -> None:
        """Raise TypeError/ValueError unless ``cpu`` is possible and hot-pluggable."""
        self.check_possible(cpu)
        if not self.hotpluggable(cpu):
            raise ValueError(f"CPU {cpu} is not hot-pluggable (it has no "
                             f"{self.online_file(cpu)})")

    def check_may_write(self, cpu: int) -> None:
        """Raise PermissionError if ``cpuN/online`` is real sysfs and we are not root."""
        if not self.is_fake and os.geteuid() != 0:
            raise PermissionError(errno.EPERM, f"CPU hotplug through {self.online_file(cpu)} "
                                  "needs root (or start the runtime on a fake sysfs tree: "
                                  "kproc.fake_sysfs)")

    def check_not_last(self, cpu: int) -> None:
        """Raise ValueError if ``cpu`` is the only online CPU (it must not go offline)."""
        if self.online() == {cpu}:
            raise ValueError(f"CPU {cpu} is the last online CPU; refusing to offline it")

    def set_online(self, cpu: int, online: bool, retries: int = 20) -> bool:
        """Write ``cpuN/online`` (1 or 0) and check it took.

        Return: True if the state changed, False if it already was so.
        Raises: ValueError (not possible, not hot-pluggable, last online CPU);
        PermissionError (real sysfs without root); OSError if it did not take.
        """
        self.check_hotpluggable(cpu)
        online = bool(online)
        if self.is_online(cpu) == online:
            return False
        if not online:
            self.check_not_last(cpu)
        self.check_may_write(cpu)
        for attempt in range(retries):
            try:
                if self.is_fake:
                    safefs.write_file(self.online_file(cpu), "1" if online else "0")
                else:
                    with open(self.online_file(cpu), "w") as f:
                        f.write("1" if online else "0")
                break
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.EAGAIN) or attempt == retries - 1:
                    raise
                time.sleep(0.001 * (attempt + 1))
        if self.is_fake:
            self._rewrite_online()
        if self.is_online(cpu) != online:
            raise OSError(errno.EIO, f"CPU {cpu} did not go {'on' if online else 'off'}line")
        return True

    def _rewrite_online(self) -> None:
        safefs.write_file(os.path.join(self.cpu_dir, "online"),
                          format_cpulist(self.online()) + "\n")

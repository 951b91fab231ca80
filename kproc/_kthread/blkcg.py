"""Block-I/O cgroup of a kthread (kernel: kthread.c kthread_associate_blkcg(),
kthread_blkcg()).

The kernel records a css on the kthread (``kthread->blkcg_css``) so that the
I/O it issues is charged to that cgroup (loop and writeback workers do this).
A process is the unit here: ``kthread_associate_blkcg(css)`` moves the calling
kthread's process into the cgroup directory ``css`` (its pid written to
``cgroup.procs``); ``None`` moves it back to the cgroup it was in before its
first association.  ``css`` is a directory of the cgroup v2 hierarchy that
has the ``io`` controller, where the host has one; else of the v1 ``blkio``
hierarchy.  Refused clearly: outside a kthread, a directory that is no such
cgroup, a host without such a hierarchy, and one the kthread may not write
(``PermissionError``).  Runs in kthreads.
"""

from __future__ import annotations

import errno
import os

from .._sched.schedule import need_current

__all__ = ["kthread_associate_blkcg", "kthread_blkcg", "blkio_hierarchy"]

_css: str | None = None             # kthread->blkcg_css
_origin: str | None = None          # where the process was before its first association


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup mount (/proc/self/mountinfo)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if len(rest) >= 3 and rest[0] in ("cgroup", "cgroup2"):
                out.append((fields[4].replace("\\040", " "), rest[0], set(rest[2].split(","))))
    return out


def _v2_has_io(mount: str) -> bool:
    try:
        with open(os.path.join(mount, "cgroup.controllers")) as f:
            return "io" in f.read().split()
    except OSError:
        return False


def blkio_hierarchy() -> tuple[str, int] | None:
    """The block-I/O cgroup hierarchy: (mount point, 2 or 1), or None if none.

    The v2 hierarchy where it has the ``io`` controller, else the v1 ``blkio``
    one.  Context: any.
    """
    mounts = _mounts()
    for mount, fstype, _ in mounts:
        if fstype == "cgroup2" and _v2_has_io(mount):
            return mount, 2
    for mount, fstype, opts in mounts:
        if fstype == "cgroup" and "blkio" in opts:
            return mount, 1
    return None


def _own_cgroup(mount: str, version: int) -> str:
    """The directory of the calling process's cgroup in that hierarchy."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            num, controllers, path = line.rstrip("\n").split(":", 2)
            if (version == 2 and num == "0" and controllers == "") or \
                    (version == 1 and "blkio" in controllers.split(",")):
                return os.path.join(mount, path.lstrip("/"))
    return mount


def _resolve_css(css: object) -> tuple[str, str, int]:
    """(css directory, hierarchy mount, version); raises for anything else."""
    if not isinstance(css, (str, os.PathLike)):
        raise TypeError(f"css must be a cgroup directory (str or path) or None, not "
                        f"{type(css).__name__}")
    found = blkio_hierarchy()
    if found is None:
        raise OSError(errno.ENODEV, "kthread_associate_blkcg(): this host has no block-I/O "
                      "cgroup hierarchy (cgroup v2 with the io controller, or v1 blkio)")
    mount, version = found
    path = os.path.realpath(os.fspath(css))
    inside = path == mount or path.startswith(mount.rstrip("/") + "/")
    if not inside or not os.path.isfile(os.path.join(path, "cgroup.procs")):
        kind = "cgroup v2 (io controller)" if version == 2 else "cgroup v1 blkio"
        raise ValueError(f"kthread_associate_blkcg(): {os.fspath(css)!r} is not a {kind} "
                         f"directory (the hierarchy is mounted at {mount})")
    return path, mount, version


def _join(path: str) -> None:
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    except PermissionError as exc:
        raise PermissionError(exc.errno, f"kthread_associate_blkcg(): may not move this "
                              f"kthread into {path} (cgroup.procs is not writable)") from None


def kthread_associate_blkcg(css: str | os.PathLike[str] | None) -> None:
    """kthread_associate_blkcg(): charge the calling kthread's I/O to ``css``.

    @css: a block-I/O cgroup directory, or None to go back where the kthread
    was.  Context: kthread.  Return: None.
    Raises: RuntimeError outside a kthread; TypeError; ValueError for a
    directory that is not such a cgroup; OSError(ENODEV) where the host has
    no such hierarchy; PermissionError where it may not be written.
    """
    global _css, _origin
    need_current("kthread_associate_blkcg")
    if css is None:
        if _css is not None and _origin is not None:
            _join(_origin)
        _css = None
        return
    path, mount, version = _resolve_css(css)
    if path == _css:
        return
    origin = _origin if _origin is not None else _own_cgroup(mount, version)
    _join(path)
    _origin, _css = origin, path


def kthread_blkcg() -> str | None:
    """kthread_blkcg(): the cgroup directory the calling kthread is associated with.

    Context: kthread (None elsewhere, as the kernel's for a non-kthread).
    Return: the directory (resolved path), or None.
    """
    return _css

"""Files kproc makes in folders other users may write (``/tmp``): fake sysfs
trees (``fake_sysfs``, the fake ``cpuN/online`` writes of hotplug) and trace
files (``start(trace=...)``).

A user who can write the parent folder can plant, before kproc comes, a
symlink or a folder of their own where kproc is about to write; a process
running as root that follows it overwrites whatever the link names.  So:

* a folder is reached by walking its path from ``/`` one component at a
  time with ``O_NOFOLLOW``: the folder itself must not be a symlink (its
  parent's path is resolved first), and a component swapped for a symlink
  after that is refused, not followed;
* the folders kproc writes *into* must be owned by this user and writable by
  nobody else (group write only for this user's own group; created 0700 when
  missing), so once checked nobody else can
  put anything in them;
* files are created anew (``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600) under
  a temporary name and renamed over the old one (which is never followed and
  never missing for a reader: a fake ``cpuN/online`` rewritten by ``cpuhp``
  while a caller looks at it), never opened for writing where they stand.

Errors are ``PermissionError`` naming the path and what is wrong with it.
Runs in whichever process writes (the owner, kthreadd, kthreads, ``cpuhp``).
"""

from __future__ import annotations

import errno
import os
import stat
import threading

__all__ = ["open_component", "open_own_dir", "check_own_dir", "own_dir", "write_new",
           "write_file", "check_own_or_absent"]

# O_PATH: a component needs only search permission, never read permission.
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _refuse(path: str, why: str) -> PermissionError:
    return PermissionError(errno.EPERM, f"refusing to write in {path}: {why}")


def check_own_dir(fd: int, path: str) -> None:
    """Raise PermissionError unless folder ``fd`` is this user's and nobody
    else may write in it (group write only where the group is ours)."""
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        raise _refuse(path, f"it is owned by uid {st.st_uid}, not by this user "
                      f"(uid {os.geteuid()})")
    if st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != os.getegid()):
        raise _refuse(path, f"others may write in it (mode {stat.filemode(st.st_mode)})")


def open_component(dir_fd: int, name: str, path: str) -> int:
    """Open folder ``name`` of ``dir_fd`` without following a symlink there.

    Return: an O_PATH descriptor.  Raises: PermissionError (a symlink),
    NotADirectoryError, FileNotFoundError.
    """
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise _refuse(path, "it is a symbolic link") from None
        raise


def open_own_dir(path: str | os.PathLike[str], *, create: bool = True) -> int:
    """Open folder ``path`` as a directory descriptor, safely (see module doc).

    Missing components are created 0700 when ``create``; the folder itself
    must be this user's and writable by nobody else.
    Context: any.  Return: the descriptor (the caller closes it).
    Raises: PermissionError (a symlink on the way, a folder of another user,
    or one others may write); FileNotFoundError (missing, ``create`` False);
    NotADirectoryError.
    """
    # The parent's symlinks are resolved (``/var/run`` is one); the folder's own
    # name never is: a link there is what someone may have planted.
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    real = os.path.join(os.path.realpath(parent), name)
    fd = os.open("/", _DIR_FLAGS)
    walked = ""
    try:
        for part in [p for p in real.split("/") if p]:
            walked += "/" + part
            if create:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
            nfd = open_component(fd, part, walked)
            os.close(fd)
            fd = nfd
        check_own_dir(fd, real)
    except BaseException:
        os.close(fd)
        raise
    return fd


def own_dir(path: str | os.PathLike[str]) -> str:
    """Make sure ``path`` is a folder of ours as :func:`open_own_dir` checks it.

    Return: its real path.  Raises: as :func:`open_own_dir`.
    """
    os.close(open_own_dir(path))
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(os.path.realpath(parent), name)


def check_own_or_absent(path: str | os.PathLike[str]) -> None:
    """Raise PermissionError unless ``path`` is missing or a folder of ours."""
    if os.path.lexists(path):
        os.close(open_own_dir(path, create=False))


def write_new(dir_fd: int, name: str, data: bytes, where: str = "") -> None:
    """Replace file ``name`` of the checked folder ``dir_fd`` by a new one (0600)
    holding ``data``: made with O_EXCL under a temporary name, then renamed over
    the old name (rename(2) replaces a symlink, it does not follow it), so that
    the name is there for readers at every moment.

    Raises: PermissionError if ``name`` is a folder; OSError.
    """
    tmp = f".{name}.{os.getpid()}.{threading.get_ident()}.new"
    try:
        os.unlink(tmp, dir_fd=dir_fd)         # left by a killed writer of that pid
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as exc:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        if isinstance(exc, IsADirectoryError):
            raise _refuse(os.path.join(where, name), "it is a folder, not a file") from None
        raise


def write_file(path: str | os.PathLike[str], text: str) -> None:
    """Replace file ``path`` by a new one holding ``text``; its folder must be
    ours (created 0700 when missing).  Raises: as :func:`open_own_dir`."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    fd = open_own_dir(folder)
    try:
        write_new(fd, name, text.encode(), folder)
    finally:
        os.close(fd)

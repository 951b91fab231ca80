"""Module-level functions the pool tests submit (functions travel by reference)."""

import os
import time

import kproc

_initialized = []


def noop():
    return None


def add(a, b=0):
    return a + b


def square(x):
    return x * x


def echo(x):
    return x


def pid():
    return os.getpid()


def affinity(_ignored=None):
    return sorted(os.sched_getaffinity(0))


def where():
    """(pid, affinity) of the worker running the call."""
    return os.getpid(), sorted(os.sched_getaffinity(0))


class Boom(Exception):
    """An exception class the caller can import too."""


def boom(msg):
    raise Boom(msg)


def raise_base(kind):
    if kind == "exit":
        raise SystemExit(3)
    raise KeyboardInterrupt


class Unpicklable:
    def __reduce__(self):
        raise TypeError("Unpicklable refuses to be pickled")


def return_unpicklable():
    return Unpicklable()


class BadError(Exception):
    def __reduce__(self):
        raise TypeError("BadError refuses to be pickled")


def raise_unpicklable():
    raise BadError("x")


def big(n):
    return b"x" * n


def length(data):
    return len(data)


def wait_on(comp, value=None):
    """Block until ``comp`` is completed; return ``value``."""
    kproc.wait_for_completion(comp)
    return value


def started_then_wait(started, release, value=None):
    kproc.complete(started)
    kproc.wait_for_completion(release)
    return value


def sleep_for(seconds, value=None):
    time.sleep(seconds)
    return value


def die(code=1):
    os._exit(code)


def append_line(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def log_call(path, tag):
    append_line(path, f"{tag}:{os.getpid()}")
    return tag


def init_log(path):
    append_line(path, f"init:{os.getpid()}")
    _initialized.append(os.getpid())


def initialized():
    return list(_initialized)


def init_fail():
    raise Boom("initializer failed")


def echo_or_boom(x):
    if x == "boom":
        raise Boom("boom")
    return x


def read_lines(path):
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def gone(pid):
    """True once ``pid`` has exited (a zombie counts as gone)."""
    import psutil
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def sleep_pid(seconds):
    """Sleep, then return the worker's pid."""
    time.sleep(seconds)
    return os.getpid()

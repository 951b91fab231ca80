"""The shared-memory layout is defined once (issue 9 item 6; STYLE habit 3).

Every arena access names a record field; these tests check that the width of
each atomic access matches the field's format, that records fit their
strides, and that arenas of another layout version are refused.
"""

import ast
import os

import pytest

import kproc
from kproc._core import layout as L
from kproc._core.arena import Arena
from kproc._core.errors import KthreadError

pytestmark = pytest.mark.timeout(30)

PACKAGE = os.path.dirname(os.path.abspath(kproc.__file__))
RECORDS = [v for v in vars(L).values() if isinstance(v, L.Record)]


def _widths_by_field():
    """{field name: set of widths it has in any record (0 = raw area, any width fits)}."""
    out = {}
    for record in RECORDS:
        for name, field in record.fields():
            out.setdefault(name, set()).add(field.width)
    return out


def _atomic_width(method):
    for width in (32, 64):
        if method.endswith(str(width)):
            return width
    return None


def _accesses():
    """(path, line, method, field name) of every atomic access naming a field."""
    found = []
    for folder, _dirs, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and _atomic_width(node.func.attr) and node.args):
                    continue
                for sub in ast.walk(node.args[0]):
                    if isinstance(sub, ast.Attribute) and \
                            isinstance(sub.value, (ast.Name, ast.Attribute)):
                        found.append((os.path.relpath(path, PACKAGE), node.lineno,
                                      node.func.attr, sub.attr))
    return found


def test_every_atomic_access_has_its_fields_width():
    """A 32-bit atomic on a 64-bit field (or the reverse) reads half a value.

    The check that found ``fetch_add32`` on the 64-bit ``HOTPLUG.events``.
    """
    widths = _widths_by_field()
    wrong = []
    for path, line, method, field in _accesses():
        have = widths.get(field)
        if have is None or 0 in have:
            continue            # not a record field, or a raw area (a sub-record's first word)
        if _atomic_width(method) not in have:
            wrong.append(f"{path}:{line}: {method} on {field} ({'/'.join(map(str, have))}-bit)")
    assert wrong == []


def test_the_width_check_sees_the_accesses():
    """The scan above is not vacuous: it finds the hot-path accesses it must check."""
    seen = {(method, field) for _p, _l, method, field in _accesses()}
    assert ("load32", "state") in seen and ("load64", "result") in seen


def test_fields_know_their_width_and_records_fit_their_strides():
    """Offsets are plain ints, and fields() carries their formats; a record never
    outgrows its stride."""
    task, hotplug = dict(L.TASK.fields()), dict(L.HOTPLUG.fields())
    assert type(L.TASK.result) is int and task["result"] == L.TASK.result
    assert task["result"].width == 64 and task["pid"].width == 32 and task["done"].width == 0
    assert hotplug["events"].width == 64
    for record in RECORDS:
        assert record.size <= record.stride, record
    assert L.TASK_BLOB.stride == L.BLOB_SIZE
    assert L.TASK_BLOB.traceback == L.BLOB_SIZE - L.TB_MAX


def test_a_record_larger_than_its_stride_fails_at_definition():
    with pytest.raises(ImportError, match="stride"):
        L.Record("too_big", [("a", "Q"), ("b", "Q")], stride=8)


def test_an_arena_of_another_layout_version_is_refused(rt):
    """kproc ps and kthreadd attach only arenas whose layout they read."""
    fd = os.dup(rt.arena.fd)
    rt.mem.store32(L.HEADER.layout_version, L.LAYOUT_VERSION + 1)
    try:
        with pytest.raises(KthreadError, match="layout version"):
            Arena.attach(fd)
    finally:
        rt.mem.store32(L.HEADER.layout_version, L.LAYOUT_VERSION)
        os.close(fd)
    other = Arena.attach(os.dup(rt.arena.fd))
    assert other.runtime_id == rt.runtime_id
    other.close()

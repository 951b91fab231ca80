/*
 * kproc._native: the pool's call-slot operations (kproc/_pool/), whole, in C.
 *
 * A pool's memory (kproc/_pool/channel.py) is a header, a DRAIN record per
 * worker and fixed-size call slots; this file knows their layout (checked
 * against channel.py's records at import through pool_layout()) and does the
 * four hot operations on them in one call each:
 *
 *  - pool_place (caller): write an inline call into a FREE slot, publish it
 *    QUEUED with its ticket, and for a map's call swap its worker's
 *    DRAIN.active to 1 (the old value says whether the drain must be queued);
 *  - pool_reap (caller): take a DONE slot's inline outcome and free the slot;
 *  - pool_run (worker, a submit()'s slot work) and pool_drain (worker, its
 *    drain work: the map calls in ticket order): claim a QUEUED slot (the
 *    compare-and-swap that races a cancel), decode the call, run it, encode
 *    and publish the outcome, mark the slot DONE.
 *
 * The worker's operations handle the common case only: an inline call whose
 * function is in the worker's cache (``fns``: pickle -> function, kept by
 * codec.py) and whose arguments unpickle here, with an inline outcome.  For
 * anything else (a call in the side channel, a function not cached, an
 * argument that needs the caller's __main__) they leave the slot RUNNING and
 * return POOL_SLOW, and Python does the call the long way; a result too big
 * for the slot comes back as its pickle for Python to publish through the
 * side channel; an exception of the call propagates with the slot RUNNING,
 * for Python to encode with its traceback.  The drain's current slot and
 * next ticket live in its DRAIN record (``cur``, ``next_ticket``), so Python picks
 * up where C left off.  The atomics are sequentially consistent, as in
 * Python (the orderings are explained in channel.py and remote.py).
 *
 * Runs in the caller (place, reap) and in the pool's worker kthreads (run,
 * drain), with the GIL held throughout.
 */
#include "kproc_native.h"

#include <sched.h>
#include <string.h>

/* The pool's layout, as channel.py declares it (pool_layout() lets it check). */
#define P_SLOT_SIZE 8192
#define P_SLOT_HDR 64                   /* SLOT.stride: the inline area follows */
#define P_INLINE_MAX (P_SLOT_SIZE - P_SLOT_HDR)
#define S_STATE 0
#define S_DIRECT 4
#define S_KIND 8
#define S_OUTCOME 12
#define S_LENGTH 16
#define S_BIG_PID 24
#define S_BIG_FD 28
#define S_BIG_INO 32
#define S_USE_SEQ 40
#define S_TICKET 48
#define H_BROKEN 16
#define H_CALLER_CPU 28
#define D_ACTIVE 0
#define D_CUR 4
#define D_NEXT 8
#define ST_FREE 0
#define ST_QUEUED 1
#define ST_RUNNING 2
#define ST_DONE 3
#define KIND_MAP 1
#define OUT_NONE 0
#define OUT_VALUE 1

/* What pool_run / pool_drain return besides the big result's pickle. */
#define POOL_LOST (-1)                  /* pool_run: not claimed (cancelled, moved, broken) */
#define POOL_SLOW (-2)                  /* the claimed slot needs the Python path */
#define DRAIN_IDLE 0                    /* no ticket left: DRAIN.active cleared */
#define DRAIN_PARK 1                    /* the worker is asked to park */
#define DRAIN_BROKEN 2                  /* the pool is broken (DRAIN.active cleared) */
#define DRAIN_DIRECT 3                  /* DRAIN.cur is DONE and has a direct waiter */

#define U32P(m, off) ((uint32_t *)((m)->base + (off)))
#define I64P(m, off) ((int64_t *)((m)->base + (off)))

static PyObject *pickle_loads, *pickle_dumps, *pickle_protocol, *none_outcome;

/* Import pickle's loads/dumps once.  Return 0, or -1 with an exception set. */
static int need_pickle(void)
{
    PyObject *mod;
    if (pickle_dumps)
        return 0;
    mod = PyImport_ImportModule("pickle");
    if (!mod)
        return -1;
    pickle_loads = PyObject_GetAttrString(mod, "loads");
    pickle_dumps = PyObject_GetAttrString(mod, "dumps");
    pickle_protocol = PyObject_GetAttrString(mod, "HIGHEST_PROTOCOL");
    Py_DECREF(mod);
    if (!pickle_loads || !pickle_dumps || !pickle_protocol) {
        Py_CLEAR(pickle_loads);
        Py_CLEAR(pickle_dumps);
        Py_CLEAR(pickle_protocol);
        return -1;
    }
    return 0;
}

/* Offset of the slot record at @arg, checked to hold a whole slot, or -1 (ValueError). */
static Py_ssize_t slot_at(MemObject *m, PyObject *arg)
{
    char *p = at_len(m, arg, P_SLOT_SIZE, 64);
    return p ? p - m->base : -1;
}

/* Write a slot's body: kind, outcome, length, no side channel. */
static void write_body(MemObject *m, Py_ssize_t off, uint32_t kind, uint32_t code,
                       Py_ssize_t len)
{
    *U32P(m, off + S_KIND) = kind;
    *U32P(m, off + S_OUTCOME) = code;
    *I64P(m, off + S_LENGTH) = len;
    *U32P(m, off + S_BIG_PID) = 0;
    *U32P(m, off + S_BIG_FD) = 0;
    *I64P(m, off + S_BIG_INO) = 0;
}

/*
 * pool_place(off, kind, payload, ticket, act_off[, amem, comp_off, flags_off,
 * park_mask]) -> old DRAIN.active (0 if act_off < 0), plus 2 if the flags word
 * at @flags_off of @amem has @park_mask after the call is published.  With
 * @amem, the slot's completion at @comp_off is re-initialised (done = 0)
 * before the call is published.  The slot at @off is FREE and only this
 * thread (under the engine's lock) writes it.
 */
static PyObject *Mem_pool_place(ARGS)
{
    Py_ssize_t off, act = -1;
    uint32_t kind, mask = 0, *comp = NULL, *flags = NULL;
    int64_t ticket;
    char *data;
    Py_ssize_t len;
    unsigned long was;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 5, 9, "pool_place") || (off = slot_at(self, args[0])) < 0 ||
        !get_u32(args[1], &kind) || PyBytes_AsStringAndSize(args[2], &data, &len) < 0 ||
        !get_i64(args[3], &ticket))
        return NULL;
    if (nargs > 5) {
        MemObject *amem = (MemObject *)args[5];
        if (nargs != 9)
            return PyErr_Format(PyExc_TypeError, "pool_place takes 5 or 9 arguments");
        if (!PyObject_TypeCheck(args[5], &MemType) || !amem->base)
            return PyErr_Format(PyExc_TypeError, "pool_place: amem must be a set-up Mem");
        if (!(comp = at(amem, args[6], 4)) || !(flags = at(amem, args[7], 4)) ||
            !get_u32(args[8], &mask))
            return NULL;
    }
    if (len > P_INLINE_MAX)
        return PyErr_Format(PyExc_ValueError, "a %zd-byte call does not fit a slot", len);
    if (PyLong_AsSsize_t(args[4]) >= 0) {
        uint32_t *a = at(self, args[4], 4);
        if (!a)
            return NULL;
        act = (char *)a - self->base;
    } else if (PyErr_Occurred()) {
        return NULL;
    }
    if (comp)
        STORE(comp, 0);                             /* reinit_completion() */
    memcpy(self->base + off + P_SLOT_HDR, data, (size_t)len);
    write_body(self, off, kind, 0, len);
    STORE(U32P(self, off + S_STATE), ST_QUEUED);
    STORE(I64P(self, off + S_TICKET), ticket);     /* after QUEUED: see remote.run_drain */
    was = act < 0 ? 0 : __atomic_exchange_n(U32P(self, act), 1, __ATOMIC_SEQ_CST);
    if (flags && (LOAD(flags) & mask))
        was |= 2;
    return PyLong_FromUnsignedLong(was);
}

/*
 * pool_reap(off) -> (outcome code, inline bytes) of the DONE slot at @off, the
 * slot freed (use_seq bumped, FREE); None, nothing done, if the outcome is in
 * the side channel.
 */
static PyObject *Mem_pool_reap(ARGS)
{
    Py_ssize_t off;
    uint32_t code;
    int64_t len;
    PyObject *out;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 1, 1, "pool_reap") || (off = slot_at(self, args[0])) < 0)
        return NULL;
    if (*U32P(self, off + S_BIG_PID))
        Py_RETURN_NONE;
    code = *U32P(self, off + S_OUTCOME);
    len = *I64P(self, off + S_LENGTH);
    if (len < 0 || len > P_INLINE_MAX)
        return PyErr_Format(PyExc_RuntimeError, "pool slot at %zd: bad length %lld", off,
                            (long long)len);
    if (code == OUT_NONE && len == 0) {
        if (!none_outcome && !(none_outcome = Py_BuildValue("(iy#)", 0, "", (Py_ssize_t)0)))
            return NULL;
        out = Py_NewRef(none_outcome);
    } else {
        out = Py_BuildValue("(ky#)", (unsigned long)code, self->base + off + P_SLOT_HDR,
                            (Py_ssize_t)len);
        if (!out)
            return NULL;
    }
    __atomic_fetch_add(I64P(self, off + S_USE_SEQ), 1, __ATOMIC_SEQ_CST);
    STORE(U32P(self, off + S_STATE), ST_FREE);
    return out;
}

/*
 * Run the call of the slot at @off, claimed (RUNNING) by this worker, and
 * publish its outcome (DONE).  Return: 1 if a thread of the caller waits on
 * the slot (SLOT.direct), 0 if not; POOL_SLOW (slot untouched) for the Python
 * path; -3 with @big set to a new reference to a result's pickle too big for
 * the slot; -4 with an exception set (the slot RUNNING).
 */
static int run_claimed(MemObject *m, Py_ssize_t off, PyObject *fns, PyObject **big)
{
    const char *data = m->base + off + P_SLOT_HDR;
    int64_t len = *I64P(m, off + S_LENGTH);
    uint32_t n;
    PyObject *key, *fn, *res, *pk;
    Py_ssize_t plen;

    if (*U32P(m, off + S_BIG_PID) || len < 4 || len > P_INLINE_MAX)
        return POOL_SLOW;
    memcpy(&n, data, 4);
    if ((int64_t)n > len - 4)
        return POOL_SLOW;
    if (!(key = PyBytes_FromStringAndSize(data + 4, n)))
        return -4;
    fn = PyDict_GetItemWithError(fns, key);         /* borrowed */
    Py_DECREF(key);
    if (!fn)
        return PyErr_Occurred() ? -4 : POOL_SLOW;
    Py_INCREF(fn);
    if (len == 4 + (int64_t)n) {
        res = PyObject_CallNoArgs(fn);
    } else {
        PyObject *raw, *pair, *cargs, *ckw;
        raw = PyBytes_FromStringAndSize(data + 4 + n, (Py_ssize_t)(len - 4 - n));
        pair = raw ? PyObject_CallOneArg(pickle_loads, raw) : NULL;
        Py_XDECREF(raw);
        if (!pair || !PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyTuple_CheckExact(PyTuple_GET_ITEM(pair, 0)) ||
            (PyTuple_GET_ITEM(pair, 1) != Py_None &&
             !PyDict_CheckExact(PyTuple_GET_ITEM(pair, 1)))) {
            /* Python decodes it again (with the caller's __main__ if it needs it) */
            PyErr_Clear();
            Py_XDECREF(pair);
            Py_DECREF(fn);
            return POOL_SLOW;
        }
        cargs = PyTuple_GET_ITEM(pair, 0);
        ckw = PyTuple_GET_ITEM(pair, 1);
        res = PyObject_Call(fn, cargs, ckw == Py_None ? NULL : ckw);
        Py_DECREF(pair);
    }
    Py_DECREF(fn);
    if (!res)
        return -4;
    if (res == Py_None) {
        Py_DECREF(res);
        write_body(m, off, *U32P(m, off + S_KIND), OUT_NONE, 0);
    } else {
        pk = PyObject_CallFunctionObjArgs(pickle_dumps, res, pickle_protocol, NULL);
        Py_DECREF(res);
        if (!pk)
            return -4;
        plen = PyBytes_GET_SIZE(pk);
        if (plen > P_INLINE_MAX) {
            *big = pk;
            return -3;
        }
        memcpy(m->base + off + P_SLOT_HDR, PyBytes_AS_STRING(pk), (size_t)plen);
        write_body(m, off, *U32P(m, off + S_KIND), OUT_VALUE, plen);
        Py_DECREF(pk);
    }
    STORE(U32P(m, off + S_STATE), ST_DONE);
    return LOAD(U32P(m, off + S_DIRECT)) != 0;
}

/* run_claimed()'s answer as pool_run / pool_drain return it (DRAIN_DIRECT for direct). */
static PyObject *ran(int r, PyObject *big, long direct_code)
{
    if (r == -3)
        return big;
    if (r == -4)
        return NULL;
    return PyLong_FromLong(r == POOL_SLOW ? POOL_SLOW : r ? direct_code : 0);
}

/*
 * pool_run(off, fns) -> 1 done with a direct waiter, 0 done without, POOL_LOST
 * (-1: cancelled, moved or the pool broken: nothing run), POOL_SLOW (-2:
 * claimed, for Python to run), or bytes: the result's pickle, too big for the
 * slot (claimed: Python publishes it).  Raises the call's exception (claimed).
 */
static PyObject *Mem_pool_run(ARGS)
{
    Py_ssize_t off;
    uint32_t expected = ST_QUEUED;
    PyObject *big = NULL;
    int r;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 2, 2, "pool_run") || (off = slot_at(self, args[0])) < 0)
        return NULL;
    if (!PyDict_Check(args[1]))
        return PyErr_Format(PyExc_TypeError, "pool_run: fns must be a dict");
    if (need_pickle() < 0)
        return NULL;
    if (LOAD(U32P(self, H_BROKEN)) || !CAS(U32P(self, off + S_STATE), &expected, ST_RUNNING))
        return PyLong_FromLong(POOL_LOST);
    r = run_claimed(self, off, args[1], &big);     /* before ran() reads big */
    return ran(r, big, 1);
}

/*
 * pool_spin_done(off, spin_ns) -> the state word of the slot at @off once it is
 * neither QUEUED nor RUNNING, or as it is after @spin_ns: a direct waiter's
 * spin (the GIL released), so it sees DONE as the worker publishes it.
 */
static PyObject *Mem_pool_spin_done(ARGS)
{
    Py_ssize_t off;
    int64_t spin_ns, end;
    uint32_t st, *state;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 2, 2, "pool_spin_done") || (off = slot_at(self, args[0])) < 0 ||
        !get_i64(args[1], &spin_ns))
        return NULL;
    state = U32P(self, off + S_STATE);
    st = LOAD(state);
    if ((st == ST_QUEUED || st == ST_RUNNING) && spin_ns > 0) {
        KP_BEGIN_ALLOW_THREADS
        end = mono_ns() + spin_ns;
        for (unsigned i = 1; (st = LOAD(state)) == ST_QUEUED || st == ST_RUNNING; i++) {
            cpu_relax();
            if (i % SPIN_CLOCK_EVERY == 0 && mono_ns() >= end)
                break;
        }
        KP_END_ALLOW_THREADS
    }
    return PyLong_FromUnsignedLong(st);
}

/* 1 once @ns have passed since @start (read every SPIN_CLOCK_EVERY rounds). */
static int spun_out(int64_t start, int64_t ns, unsigned *round)
{
    return ++*round % SPIN_CLOCK_EVERY == 0 && mono_ns() - start >= ns;
}

/*
 * pool_drain(drain_off, first, nslots, slots_base, amem, flags_off, park_mask,
 * spin_ns, fns): the drain work's loop (remote.run_drain) over worker slots
 * first..first+nslots-1, from ticket DRAIN.next_ticket.  Before giving up on a
 * ticket not placed yet it spins up to @spin_ns for it, unless the caller
 * runs on this CPU (HEADER.caller_cpu).  Return: DRAIN_IDLE, DRAIN_PARK
 * (flags at @flags_off of @amem has @park_mask), DRAIN_BROKEN, DRAIN_DIRECT
 * or POOL_SLOW for the slot in DRAIN.cur, or a too-big result's pickle for
 * it; raises the exception of DRAIN.cur's call.
 */
static PyObject *Mem_pool_drain(ARGS)
{
    Py_ssize_t doff, first, nslots, base;
    uint32_t mask, *flags, *act, *cur;
    int64_t *headp, h, spin_ns;
    MemObject *amem;
    PyObject *fns, *big = NULL;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 9, 9, "pool_drain"))
        return NULL;
    if (!(act = at_len(self, args[0], 16, 8)))
        return NULL;
    doff = (char *)act - self->base;
    first = PyLong_AsSsize_t(args[1]);
    nslots = PyLong_AsSsize_t(args[2]);
    base = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if (!PyObject_TypeCheck(args[4], &MemType) || !((MemObject *)args[4])->base)
        return PyErr_Format(PyExc_TypeError, "pool_drain: amem must be a set-up Mem");
    amem = (MemObject *)args[4];
    if (!(flags = at(amem, args[5], 4)) || !get_u32(args[6], &mask) ||
        !get_i64(args[7], &spin_ns))
        return NULL;
    fns = args[8];
    if (!PyDict_Check(fns))
        return PyErr_Format(PyExc_TypeError, "pool_drain: fns must be a dict");
    if (nslots <= 0 || first < 0 || base < 0 ||
        base + (first + nslots) * P_SLOT_SIZE > self->size)
        return PyErr_Format(PyExc_ValueError, "pool_drain: slots out of bounds");
    if (need_pickle() < 0)
        return NULL;
    cur = U32P(self, doff + D_CUR);
    headp = I64P(self, doff + D_NEXT);
    h = *headp;
    for (;;) {
        Py_ssize_t slot, off;
        int64_t t;
        uint32_t expected = ST_QUEUED;
        int r;
        if (LOAD(U32P(self, H_BROKEN))) {
            STORE(act, 0);
            *headp = h;
            return PyLong_FromLong(DRAIN_BROKEN);
        }
        if (LOAD(flags) & mask) {
            *headp = h;
            return PyLong_FromLong(DRAIN_PARK);
        }
        slot = first + h % nslots;
        off = base + slot * P_SLOT_SIZE;
        t = LOAD(I64P(self, off + S_TICKET));
        if (t < h) {                    /* ticket h not placed yet */
            uint32_t ccpu = LOAD(U32P(self, H_CALLER_CPU));
            if (spin_ns > 0 && (ccpu == 0 || (int)ccpu - 1 != sched_getcpu())) {
                int64_t start = mono_ns();
                unsigned round = 0;
                while ((t = LOAD(I64P(self, off + S_TICKET))) < h &&
                       !LOAD(U32P(self, H_BROKEN)) && !(LOAD(flags) & mask) &&
                       !spun_out(start, spin_ns, &round))
                    cpu_relax();
                if (t >= h)
                    continue;
            }
            STORE(act, 0);
            if (LOAD(I64P(self, off + S_TICKET)) < h ||
                __atomic_exchange_n(act, 1, __ATOMIC_SEQ_CST)) {
                *headp = h;
                return PyLong_FromLong(DRAIN_IDLE);
            }
            continue;
        }
        h++;
        if (t > h - 1 || *U32P(self, off + S_KIND) != KIND_MAP ||
            !CAS(U32P(self, off + S_STATE), &expected, ST_RUNNING))
            continue;                   /* cancelled or moved; not a map call */
        *cur = (uint32_t)slot;
        *headp = h;
        r = run_claimed(self, off, fns, &big);
        if (r == 0)
            continue;
        return ran(r, big, DRAIN_DIRECT);
    }
}

/* pool_layout() -> the offsets and sizes this file assumes (channel.py checks them). */
PyObject *mod_pool_layout(PyObject *Py_UNUSED(mod), PyObject *Py_UNUSED(noargs))
{
    return Py_BuildValue(
        "{si si si si si si si si si si si si si si si si}",
        "SLOT_SIZE", P_SLOT_SIZE, "SLOT.stride", P_SLOT_HDR, "SLOT.state", S_STATE,
        "SLOT.direct", S_DIRECT, "SLOT.kind", S_KIND, "SLOT.outcome", S_OUTCOME,
        "SLOT.length", S_LENGTH, "SLOT.big_pid", S_BIG_PID, "SLOT.big_fd", S_BIG_FD,
        "SLOT.big_ino", S_BIG_INO, "SLOT.use_seq", S_USE_SEQ, "SLOT.ticket", S_TICKET,
        "HEADER.broken", H_BROKEN, "HEADER.caller_cpu", H_CALLER_CPU,
        "DRAIN.cur", D_CUR, "DRAIN.next_ticket", D_NEXT);
}

PyMethodDef pool_methods[] = {
    M(pool_place, "pool_place(off, kind, payload, ticket, act_off[, amem, comp_off, "
                  "flags_off, park_mask]) -> old DRAIN.active, + 2 if asked to park"),
    M(pool_spin_done, "pool_spin_done(off, spin_ns) -> the slot's state once not QUEUED or "
                      "RUNNING, or after spin_ns"),
    M(pool_reap, "pool_reap(off) -> (code, bytes) of a DONE slot, freed; None: side channel"),
    M(pool_run, "pool_run(off, fns) -> 1/0 done (direct waiter or not), -1 lost, -2 slow, "
                "or a too-big result's pickle"),
    M(pool_drain, "pool_drain(drain_off, first, nslots, slots_base, amem, flags_off, "
                  "park_mask, spin_ns, fns) -> 0 idle, 1 park, 2 broken, 3 direct, -2 slow, "
                  "or a too-big result's pickle"),
    {NULL, NULL, 0, NULL},
};

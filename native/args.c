/*
 * kproc._native: argument parsing for the Mem methods.
 *
 * The hot methods are METH_FASTCALL and parse by hand (no PyArg_Parse*): the
 * count check and the int conversions are inline in kproc_native.h, what is
 * here are their error paths and the parsing of optional, nameable
 * parameters.  Runs in the calling thread, with the GIL held.
 */
#include "kproc_native.h"

/* nargs_ok()'s error path: TypeError set, return 0. */
int nargs_error(Py_ssize_t nargs, Py_ssize_t lo, Py_ssize_t hi, const char *name)
{
    if (lo == hi)
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)",
                     name, lo, nargs);
    else
        PyErr_Format(PyExc_TypeError, "%s() takes %zd to %zd arguments (%zd given)",
                     name, lo, hi, nargs);
    return 0;
}

/*
 * For the methods with optional parameters (which may be named): spread the
 * positional and keyword arguments over @out[0..hi) in parameter order, NULL
 * where one was not given (its default applies).  The first @lo are required.
 * Return 1, or 0 with TypeError set.
 */
int parse_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
               const char *fname, const char *const names[], Py_ssize_t lo,
               Py_ssize_t hi, PyObject **out)
{
    Py_ssize_t i, k, nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > hi) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd arguments (%zd given)",
                     fname, hi, nargs);
        return 0;
    }
    for (i = 0; i < hi; i++)
        out[i] = i < nargs ? args[i] : NULL;
    for (k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        for (i = 0; i < hi; i++)
            if (PyUnicode_CompareWithASCIIString(key, names[i]) == 0)
                break;
        if (i == hi) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                         fname, key);
            return 0;
        }
        if (out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                         fname, names[i]);
            return 0;
        }
        out[i] = args[nargs + k];
    }
    for (i = 0; i < lo; i++) {
        if (!out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'",
                         fname, names[i]);
            return 0;
        }
    }
    return 1;
}

/*
 * Absolute CLOCK_MONOTONIC deadline for a relative @timeout_obj in ns:
 * negative, None or not given (NULL) means none (NO_DEADLINE).
 * Return 0, or -1 with an exception set.
 */
int get_deadline(PyObject *timeout_obj, int64_t *deadline)
{
    int64_t t, now;
    if (!timeout_obj || timeout_obj == Py_None) {
        *deadline = NO_DEADLINE;
        return 0;
    }
    if (!get_i64(timeout_obj, &t))
        return -1;
    if (t < 0) {
        *deadline = NO_DEADLINE;
        return 0;
    }
    now = mono_ns();
    *deadline = t > INT64_MAX - now ? NO_DEADLINE : now + t;
    return 0;
}

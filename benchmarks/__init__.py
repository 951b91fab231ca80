"""kproc benchmarks: the suite lives in the package (``kproc._bench``, run by
``kproc bench``); this folder keeps ``python -m benchmarks`` as a shim and
the C futex floor's source (``c/futex_floor.c``, built by ``make floor``)."""

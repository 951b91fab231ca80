"""The chaos suite (issue #11, SPEC §5): kproc under kills, Ctrl-C, load, hostile
arguments and another user, with figures.

``python -m chaos`` (``make chaos``) runs every experiment on both wait
backends, bounded in count and time, and prints one line per experiment and
backend with its figures (trials, hangs, orphans, leaked fds / mappings /
``/dev/shm`` entries, lost and duplicated works, recovery time p50/p99), then
``N passed, N failed``; the exit status is 1 if any failed.  ``--quick`` is the
reduced form ``make test`` runs (``tests/test_chaos.py``).

Modules: ``harness`` (results, the leak and orphan accounting, timing),
``fns`` (the module-level functions kthreads and works run), ``kills`` (the
kill storm, lock-holder death), ``load``, ``fuzz`` (hypothesis), ``sigint``
(Ctrl-C storms, in a child owner ``sigint_child``), ``uid`` (another user),
``__main__`` (the runner).

Every process a run starts carries ``KPROC_CHAOS_RUN=<token>`` in its
environment (kthreadd and kthreads inherit it), so an orphan is found however
it was reparented; each experiment ends by counting such processes, its new
file descriptors, arena mappings and ``/dev/shm`` entries, and removes what it
counted.  CPU hotplug is never touched.
"""

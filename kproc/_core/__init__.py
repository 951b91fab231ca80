"""The base every mechanism stands on; it imports nothing else of kproc.

``errors`` (KthreadError, KernelWarning, warn_on_once), ``layout`` (every shared
record, defined once), ``native`` / ``memlike`` / ``pymem`` (the C extension's
features, the atomics' protocol, the pure-Python stand-in), ``arena`` and ``slots``
(the shared memory and its tables), ``blobs`` (a task's name, payload, traceback),
``handle`` (the base of every handle), ``checks`` (argument checks), ``funcref``
(functions passed by reference), ``wait`` (futex and posix backends), ``swait``
(the FIFO queue of a completion's sleeping waiters), ``hung_task`` (the hung-task
check of control calls), ``syscalls``,
``topology`` (sysfs, fake trees), ``runtime`` / ``owner`` (this process's view of
its runtime, the owner's handles and start-up), ``trace`` (trace events).
Runs in every process of a runtime.
"""

"""kthread workers and works (kernel/kthread.c 6.15, the kthread_worker API).

One module per mechanism, each importing only those listed before it:

* ``fastpath``    -- glue to the C fast paths (``Mem.wq_setup``, the lock spin)
* ``payload``     -- a work's blob: pickled ``(func, data)``, last traceback
* ``tracepoints`` -- the ``sched_kthread_work_*`` trace events
* ``lists``       -- everything under ``worker->lock``: link, unlink, insert, pop,
  cancel, ties, orphan frees, and the sanity checks of each
* ``timers``      -- the timer list (``kthread_delayed_work_timer_fn``)
* ``lifetime``    -- work and worker slot lifetime: orphans, deferred frees, sweep
* ``handles``     -- ``KthreadWorker``, ``KthreadWork``, ``KthreadDelayedWork``
  and the argument checks
* ``queue``, ``flush``, ``cancel``, ``delayed`` -- the public operations
* ``loop``        -- the worker's loop (``kthread_worker_fn``'s body)
* ``worker``      -- create, init, destroy
"""

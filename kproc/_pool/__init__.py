"""KthreadPoolExecutor: concurrent.futures on kthread workers (SPEC §3 "Pools").

Beyond the kernel, for Python users; built on the floor below
(``_workqueue`` workers and works, ``_hotplug`` states, completions).  One
module per mechanism, each importing only those listed before it:

* ``channel``   -- the shared memory: call slots in a memfd, large payloads in
  memfds of their own (nothing ever named in /dev/shm)
* ``codec``     -- a call and its outcome as bytes; the remote traceback
* ``remote``    -- what a worker runs for a call slot (``run_slot``)
* ``errors``    -- ``BrokenKthreadPool``
* ``call``      -- one call as the caller keeps it (and its map's shared state)
* ``engine``    -- the caller's side: slots, dispatch, reaping, cancel, moving calls
* ``direct``    -- a thread waiting on its call's slot and reaping it
* ``future``    -- the pool's ``concurrent.futures.Future``
* ``mapping``   -- ``map()``: calls without a Future each, reaped in order
* ``collector`` -- the collector and watcher threads
* ``hotplug``   -- the pool's hotplug state (workers park with their CPU)
* ``executor``  -- ``KthreadPoolExecutor``
"""

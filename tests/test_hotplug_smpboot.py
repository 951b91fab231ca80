"""Per-CPU hotplug threads (kproc/_hotplug/smpboot.py, hotplug_threads.py,
smpboot_thread.py, ap_thread.py; kernel/smpboot.c): creation, park on down
and re-bind on up, the walks' orders, the per-CPU store from every kind of
process, ``__kthread_should_park``, the unpark callback only after a park.

Every test runs on a fake sysfs tree, and again on the real /sys when this
runs as root with a writable ``cpuN/online``; each brings every CPU back.
"""

import os

import pytest

import kproc
from kproc._hotplug import ap_thread, hotplug_threads
from fns import hotplug as hpfuncs
from helpers import HP_MODES, all_online, hotplug_env, wait_until

pytestmark = pytest.mark.timeout(60)

hp = pytest.fixture(params=HP_MODES)(hotplug_env)


def _state(task):
    return kproc.task_state(task)


def _ht(**kw):
    return kproc.SmpHotplugThread(hpfuncs.never, hpfuncs.nothing, "hptest/%u",
                                  setup=hpfuncs.setup, cleanup=hpfuncs.cleanup,
                                  park=hpfuncs.park, unpark=hpfuncs.unpark, **kw)


def test_percpu_threads_park_on_down_and_come_back_bound(hp):
    ht = _ht(create=hpfuncs.create)
    assert kproc.smpboot_register_percpu_thread(ht) == 0
    try:
        for cpu in kproc.cpu_online_mask():
            task = ht.task(cpu)
            assert task is not None and kproc.kthread_is_per_cpu(task)
            assert task.comm == f"hptest/{cpu}"
            wait_until(lambda: ("setup", str(cpu), "1") in hp.log())
            if cpu in hp.rt.topology.host_online():      # not a modelled CPU
                assert os.sched_getaffinity(task.pid) == {cpu}
        task = ht.task(hp.cpu)
        assert kproc.cpu_down(hp.cpu) == 0
        assert _state(task) == kproc.TASK_PARKED
        assert ("park", str(hp.cpu), "1") in hp.log()
        assert kproc.cpu_up(hp.cpu) == 0
        assert ht.task(hp.cpu) == task
        assert os.sched_getaffinity(task.pid) == {hp.cpu}
        wait_until(lambda: ("unpark", str(hp.cpu), "1") in hp.log())
        wait_until(lambda: _state(task) == kproc.TASK_INTERRUPTIBLE)
    finally:
        all_online(hp.root)
        kproc.smpboot_unregister_percpu_thread(ht)
    assert ("cleanup1", str(hp.cpu), "1") in hp.log()
    assert ht.task(hp.cpu) is None
    wait_until(lambda: _state(task) == kproc.TASK_DEAD)


def test_a_percpu_thread_moved_off_its_live_cpu_binds_itself_back(hp):
    """kthread.c line 607: a bound kthread gets PF_NO_SETAFFINITY, so nobody can move
    a per-CPU thread off its CPU (sched_setaffinity refuses it).  kproc cannot refuse
    a move from outside, nor tell it from a binding an outside offline broke (an
    unpark whose re-bind met its CPU offline again); either way, once the thread runs
    and finds its CPU up, it takes the binding back instead of waiting unbound for a
    park no hotplug will bring."""
    cpu = hp.cpu
    if cpu not in hp.rt.topology.host_online():
        pytest.skip("a modelled CPU (not on this host) has no binding to break")
    ht = kproc.SmpHotplugThread(hpfuncs.always, hpfuncs.where_am_i, "hpbind/%u")
    assert kproc.smpboot_register_percpu_thread(ht) == 0
    try:
        task = ht.task(cpu)
        wait_until(lambda: os.sched_getaffinity(task.pid) == {cpu})
        os.sched_setaffinity(task.pid, hp.rt.topology.host_online())
        kproc.wake_up_process(task)
        wait_until(lambda: os.sched_getaffinity(task.pid) == {cpu}, 2.0,
                   message="the thread stayed off its CPU, unbound")
        assert kproc.task_state(task) != kproc.TASK_PARKED
    finally:
        kproc.smpboot_unregister_percpu_thread(ht)


def test_unpark_callback_only_after_a_park_callback(hp):
    """smpboot.c smpboot_thread_fn(): "if (ht->unpark && td->status ==
    HP_THREAD_PARKED) ht->unpark(td->cpu)": a thread created for a CPU coming up
    (parked before it ever ran: status HP_THREAD_NONE) gets setup, never unpark."""
    ht = _ht()
    try:
        assert kproc.cpu_down(hp.cpu) == 0
        assert kproc.smpboot_register_percpu_thread(ht) == 0
        assert kproc.cpu_up(hp.cpu) == 0
        wait_until(lambda: ("setup", str(hp.cpu), "1") in hp.log())
        wait_until(lambda: _state(ht.task(hp.cpu)) == kproc.TASK_INTERRUPTIBLE)
        assert ("unpark", hp.cpu) not in hp.what()
    finally:
        all_online(hp.root)
        kproc.smpboot_unregister_percpu_thread(ht)


def test_no_unpark_callback_without_a_park_callback(hp):
    """SPEC §4 / smpboot.c smpboot_thread_fn(): "if (ht->park && td->status ==
    HP_THREAD_ACTIVE) { ht->park(td->cpu); td->status = HP_THREAD_PARKED; }":
    without a park callback the status stays ACTIVE, so unpark never runs."""
    ht = kproc.SmpHotplugThread(hpfuncs.never, hpfuncs.nothing, "hpnopark/%u",
                                setup=hpfuncs.setup, unpark=hpfuncs.unpark)
    assert kproc.smpboot_register_percpu_thread(ht) == 0
    task = ht.task(hp.cpu)
    try:
        wait_until(lambda: ("setup", str(hp.cpu), "1") in hp.log())
        assert kproc.cpu_down(hp.cpu) == 0
        assert kproc.cpu_up(hp.cpu) == 0
        wait_until(lambda: _state(task) == kproc.TASK_INTERRUPTIBLE)
        assert kproc.cpu_down(hp.cpu) == 0          # the loop has run again by now
        assert ("unpark", hp.cpu) not in hp.what()
    finally:
        all_online(hp.root)
        kproc.smpboot_unregister_percpu_thread(ht)


def test_cpu_coming_up_later_gets_its_thread(hp):
    ht = _ht()
    try:
        assert kproc.cpu_down(hp.cpu) == 0
        assert kproc.smpboot_register_percpu_thread(ht) == 0
        assert ht.task(hp.cpu) is None
        assert kproc.cpu_up(hp.cpu) == 0
        task = ht.task(hp.cpu)
        assert task is not None and os.sched_getaffinity(task.pid) == {hp.cpu}
        wait_until(lambda: ("setup", str(hp.cpu), "1") in hp.log())
    finally:
        all_online(hp.root)
        kproc.smpboot_unregister_percpu_thread(ht)


def test_register_twice_and_unregister_unknown(hp):
    ht = _ht()
    with pytest.raises(ValueError):
        kproc.smpboot_unregister_percpu_thread(ht)
    assert kproc.smpboot_register_percpu_thread(ht) == 0
    with pytest.raises(kproc.KthreadError):
        kproc.smpboot_register_percpu_thread(ht)
    twin = _ht()            # another struct alike: its own registration and store
    assert kproc.smpboot_register_percpu_thread(twin) == 0
    assert twin.task(hp.cpu).pid != ht.task(hp.cpu).pid
    kproc.smpboot_unregister_percpu_thread(twin)
    kproc.smpboot_unregister_percpu_thread(ht)


def test_unregister_stops_a_parked_thread_of_an_offline_cpu(hp):
    ht = _ht()
    assert kproc.smpboot_register_percpu_thread(ht) == 0
    task = ht.task(hp.cpu)
    try:
        # setup has run, so cleanup is due (the kernel skips cleanup for a thread
        # parked again before its loop ever ran: status HP_THREAD_NONE)
        wait_until(lambda: ("setup", str(hp.cpu), "1") in hp.log())
        assert kproc.cpu_down(hp.cpu) == 0
        kproc.smpboot_unregister_percpu_thread(ht)
        assert ("cleanup0", str(hp.cpu), "0") in hp.log()
        assert _state(task) == kproc.TASK_DEAD
    finally:
        all_online(hp.root)


def test_smpboot_walks_registrations_newest_first_and_parks_oldest_first(hp, monkeypatch):
    """smpboot.c's orders: smpboot_register_percpu_thread() list_add()s, so the
    newest registration heads hotplug_threads; smpboot_create_threads() and
    smpboot_unpark_threads() walk it with list_for_each_entry (newest first),
    smpboot_park_threads() with list_for_each_entry_reverse (oldest first).

    The walks, run here in the test process with their kthread calls recorded
    (a thread's own unpark callback runs whenever it gets the CPU, so only the
    calls show the order).
    """
    calls = []
    for module, name in ((hotplug_threads, "kthread_create_on_cpu"),
                         (ap_thread, "kthread_park"), (ap_thread, "kthread_unpark_usable")):
        real = getattr(module, name)

        def record(*args, _name=name, _real=real):
            ret = _real(*args)
            task = ret if _name == "kthread_create_on_cpu" else args[0]
            calls.append((_name[len("kthread_"):].replace("_usable", ""), task.comm))
            return ret
        monkeypatch.setattr(module, name, record)
    old = kproc.SmpHotplugThread(hpfuncs.never, hpfuncs.nothing, "hpold/%u")
    new = kproc.SmpHotplugThread(hpfuncs.never, hpfuncs.nothing, "hpnew/%u")
    try:
        assert kproc.cpu_down(hp.cpu) == 0
        assert kproc.smpboot_register_percpu_thread(old) == 0
        assert kproc.smpboot_register_percpu_thread(new) == 0
        threads = hotplug_threads.HotplugThreads(hp.rt)
        threads.hotplug_threads = [(new._reg[1], new), (old._reg[1], old)]
        assert threads.create_threads(hp.cpu) == 0
        names = [f"hpnew/{hp.cpu}", f"hpold/{hp.cpu}"]
        assert calls == [("create_on_cpu", n) for n in names]
        # the created ones are in the store now; the AP walks read it
        del calls[:]
        assert ap_thread.smpboot_unpark_threads(hp.cpu) == 0
        assert calls == [("unpark", n) for n in names]
        del calls[:]
        assert ap_thread.smpboot_park_threads(hp.cpu) == 0
        assert calls == [("park", n) for n in reversed(names)]
    finally:
        all_online(hp.root)
        for ht in (new, old):
            kproc.smpboot_unregister_percpu_thread(ht)


def test_cpu_up_creates_newest_registration_first_cpu_down_parks_oldest_first(hp):
    """The same orders end to end, through cpuhp: smpboot_create_threads() runs
    the ``create`` callbacks newest first (in cpuhp, as each thread is made);
    smpboot_park_threads() parks oldest first (each ``park`` callback has run
    when kthread_park() returns)."""
    old = kproc.SmpHotplugThread(hpfuncs.never, hpfuncs.nothing, "hpold/%u",
                                 create=hpfuncs.create_old, park=hpfuncs.park_old)
    new = kproc.SmpHotplugThread(hpfuncs.never, hpfuncs.nothing, "hpnew/%u",
                                 create=hpfuncs.create_new, park=hpfuncs.park_new)
    try:
        assert kproc.cpu_down(hp.cpu) == 0
        assert kproc.smpboot_register_percpu_thread(old) == 0
        assert kproc.smpboot_register_percpu_thread(new) == 0
        hp.clear()
        assert kproc.cpu_up(hp.cpu) == 0
        assert [w for w, *_ in hp.log()] == ["create_new", "create_old"]
        tasks = [old.task(hp.cpu), new.task(hp.cpu)]
        # asleep in the loop: setup has run, so each park callback is due
        wait_until(lambda: all(_state(t) == kproc.TASK_INTERRUPTIBLE for t in tasks))
        hp.clear()
        assert kproc.cpu_down(hp.cpu) == 0
        assert [w for w, *_ in hp.log()] == ["park_old", "park_new"]
    finally:
        all_online(hp.root)
        for ht in (new, old):
            if ht.task(0) is not None:
                kproc.smpboot_unregister_percpu_thread(ht)


# -- the per-CPU store, everywhere ------------------------------------------------------

def test_store_is_filled_before_create_and_seen_by_every_process(hp):
    """Issue #10 item 1: ht.task(cpu) was None outside the registering process.
    smpboot.c __smpboot_create_thread(): "*per_cpu_ptr(ht->store, cpu) = tsk;"
    comes before "if (ht->create) ht->create(cpu)", and the store is the one
    static struct every kernel thread reads.  Here the module-level
    ``fns.hotplug.STORE_HT``, imported afresh in each process, is looked up from
    cpuhp (create, a cpuhp callback), from the per-CPU thread (setup,
    thread_fn), from another kthread and from the caller."""
    ht = hpfuncs.STORE_HT
    assert kproc.smpboot_register_percpu_thread(ht) == 0
    try:
        cpus = sorted(kproc.cpu_online_mask())
        pids = {cpu: ht.task(cpu).pid for cpu in cpus}
        assert kproc.cpuhp_setup_state(kproc.CPUHP_AP_ONLINE_DYN, "test:store",
                                       hpfuncs.store_startup, None) > 0
        done = kproc.Completion()
        kproc.kthread_run(hpfuncs.store_kthread, done, "hpstorek")
        kproc.wait_for_completion(done)
        wait_until(lambda: {(w, int(c)) for w, c, *_ in hpfuncs.store_lines(hp.logdir)} >=
                   {(w, c) for w in ("create", "setup", "thread_fn", "cpuhp", "kthread")
                    for c in cpus},
                   message=lambda: f"store lines: {hpfuncs.store_lines(hp.logdir)}")
        for who, cpu, pid, _process in hpfuncs.store_lines(hp.logdir):
            assert pid == str(pids[int(cpu)]), (who, cpu, pid)
        for who, cpu, _pid, process in hpfuncs.store_lines(hp.logdir):
            if who in ("setup", "thread_fn"):
                assert int(process) == pids[int(cpu)]     # the thread itself
    finally:
        kproc.smpboot_unregister_percpu_thread(ht)


def test_kthread_should_park_of_another_task(hp):
    """kthread.c: __kthread_should_park(k) tests KTHREAD_SHOULD_PARK of ``k``
    (not of current), so a holder of the handle can ask, from any process."""
    ht = _ht()
    assert kproc.smpboot_register_percpu_thread(ht) == 0
    task = ht.task(hp.cpu)
    try:
        assert kproc.__kthread_should_park(task) is False
        assert kproc.cpu_down(hp.cpu) == 0
        assert kproc.__kthread_should_park(task) is True
        assert kproc.cpu_up(hp.cpu) == 0
        assert kproc.__kthread_should_park(task) is False
        with pytest.raises(TypeError):
            kproc.__kthread_should_park(42)
    finally:
        all_online(hp.root)
        kproc.smpboot_unregister_percpu_thread(ht)

"""The hotplug state machine of the control side (kernel: kernel/cpu.c,
``_cpu_down``, ``_cpu_up``, ``cpuhp_up_callbacks``, ``cpuhp_down_callbacks``,
``takedown_cpu``, ``bringup_cpu``, ``__cpuhp_setup_state_cpuslocked``,
``cpuhp_rollback_install``, ``__cpuhp_remove_state_cpuslocked``).

The states of a CPU, ascending (``callbacks``): ``CPUHP_CREATE_THREADS`` and
the BP dynamic states (run here, on the control side); the sysfs write;
then ``CPUHP_AP_SMPBOOT_THREADS``, ``CPUHP_AP_KTHREADS_ONLINE`` and the AP
dynamic states, run by the CPU's own ``cpuhp/N`` thread (``ap_thread``).

``up``: BP startups (a failure rolls them back), ``1`` written, cpuhp/N
unparked (so re-bound to the CPU), the AP startups on the CPU (a failure
rolls them back there; then cpuhp/N is parked, ``0`` written and the BP
teardowns run).  ``down``: the AP teardowns on the CPU (a failure rolls them
back there and the CPU stays online), cpuhp/N parked, ``0`` written, the
affinities narrowed (``kthreads_offline_cpu``), the BP teardowns.

A change made by someone else is replayed after the fact, each callback
once: an offline runs the AP teardowns here (the CPU is gone: on a CPU
still online, which the trace event records, ``after_the_fact``), then as
above; an online runs the BP startups here and the AP startups on the CPU
in cpuhp/N (here if cpuhp/N finds itself off its CPU: it went down again).
Nothing is rolled back after the fact: there is no state to go back to.

``known`` is the set of CPUs at CPUHP_ONLINE (every startup run).
Context: the control cpuhp kthread only.
"""

from __future__ import annotations

import errno
import pickle
import sys
import time
import traceback

from .._core import layout as L
from .._core import trace as _trace
from .._core.errors import warn_on_once
from .._kthread.affinity import kthreads_offline_cpu
from .._kthread.control import kthread_park, kthread_unpark, kthread_unpark_usable
from .ap_thread import (CpuhpThreads, kick_ap, kthreads_online, make_plan, post_ap_job,
                        post_ap_plan, smpboot_park_threads, smpboot_unpark_threads,
                        wait_ap_job, withdraw_ap_job)
from .callbacks import (CPUHP_AP_KTHREADS_ONLINE, CPUHP_AP_SMPBOOT_THREADS,
                        CPUHP_CREATE_THREADS, HotplugState, States, is_ap_state, run_steps)
from .hotplug_threads import HotplugThreads
from .record import H, hp_base, store_known
from .smpboot_thread import getcpu
from .uevent import UeventWatch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .._core.runtime import Runtime  # typing only
    from .._sched.task import Task  # typing only
    from .callbacks import StateCallback, Step  # typing only

__all__ = ["Machine"]


class Machine:
    """The state the control cpuhp kthread owns (kernel: cpuhp_hp_states,
    cpuhp_state per CPU, cpu_online_mask as cpuhp saw it)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.hp = hp_base(rt)
        self.hotplug_threads = HotplugThreads(rt)
        self.states = States()
        self.known = rt.topology.online()
        store_known(rt, self.known)
        self.watch = UeventWatch(rt)
        # up -> (states.gen, the pickled AP section, its steps): the AP jobs, numbered
        self._jobs: dict[bool, tuple[int, bytes, list[Step]]] = {}
        # cpuhp_threads is registered first (the oldest of hotplug_threads)
        self.cpuhp_threads = CpuhpThreads()
        self.hotplug_threads.reap_stale()
        reg = self.hotplug_threads.register(self.cpuhp_threads, self.known)
        if isinstance(reg, int):
            raise OSError(-reg, "cpuhp: the cpuhp/N threads could not be created")
        for cpu in sorted(self.known):       # cpuhp_online_idle() for the CPUs up already
            self._unpark_cpuhp_n(cpu)

    # -- steps --------------------------------------------------------------------

    def _bp_up_steps(self) -> list[Step]:
        create: Step = (CPUHP_CREATE_THREADS, "threads:prepare",
                        self.hotplug_threads.create_threads, None)
        return [create] + [st.up_step() for st in self.states.bp()]

    def _bp_down_steps(self) -> list[Step]:
        return [st.down_step() for st in reversed(self.states.bp())]

    @staticmethod
    def _builtin_up_steps() -> list[Step]:
        return [(CPUHP_AP_SMPBOOT_THREADS, "smpboot/threads:online", smpboot_unpark_threads,
                 smpboot_park_threads),
                (CPUHP_AP_KTHREADS_ONLINE, "kthreads:online", kthreads_online, None)]

    def _ap_up_steps(self) -> list[Step]:
        return self._builtin_up_steps() + [st.up_step() for st in self.states.ap()]

    def _ap_down_steps(self) -> list[Step]:
        return [(n, name, undo, do) for n, name, do, undo in reversed(self._ap_up_steps())]

    def _ap_job(self, up: bool) -> tuple[bytes, int, list[Step]]:
        """The whole AP section as a job (ascending up, descending down): its pickle,
        number and steps, made once per generation of the states."""
        gen = self.states.gen
        job = self._jobs.get(up)
        if job is None or job[0] != gen:
            steps = self._ap_up_steps() if up else self._ap_down_steps()
            job = (gen, pickle.dumps((steps, up), protocol=pickle.HIGHEST_PROTOCOL), steps)
            self._jobs[up] = job
        return job[1], (2 * gen + int(up)) % 0x7FFFFFFF + 1, job[2]

    def _ap_section(self, cpu: int, up: bool, after_the_fact: bool) -> int:
        """The AP states of ``cpu`` in order (ascending up, descending down), on the
        CPU in cpuhp/N.  Return: 0 or a negative errno (rolled back there)."""
        raw, number, steps = self._ap_job(up)
        task = self.cpuhp_threads.task(cpu)
        if task is not None:
            post_ap_job(self.rt, cpu, raw, number, False)
            kick_ap(task)
        return self._finish_ap(cpu, task, steps, up, after_the_fact)

    def _start_ap(self, cpu: int) -> Task | None:
        """The AP startups of ``cpu``, which came up already, handed to cpuhp/N: the
        job posted, cpuhp/N unparked (re-bound; its unpark is the kick), then the
        plan made and posted while it wakes up (ap_thread).  Return: cpuhp/N, or
        None if the CPU has none; finish_ap() waits."""
        task = self.cpuhp_threads.task(cpu)
        if task is None:
            return None
        raw, number, _steps = self._ap_job(True)
        post_ap_job(self.rt, cpu, raw, number, True)
        kthread_unpark(task)
        self._post_plan(cpu)
        return task

    def _early_ap(self, cpu: int) -> Task | None:
        """Before the write that brings ``cpu`` up: the AP startup job posted and
        cpuhp/N unparked, as the kernel's AP unparks it at CPUHP_AP_ONLINE_IDLE,
        long before the online completes.  It binds itself to the CPU once it runs
        tasks and waits for the plan (_post_plan), the sign that the write
        returned (ap_thread).  Return: cpuhp/N, or None if the CPU has none."""
        task = self.cpuhp_threads.task(cpu)
        if task is None:
            return None
        raw, number, _steps = self._ap_job(True)
        post_ap_job(self.rt, cpu, raw, number, True)
        kthread_unpark_usable(task, frozenset())     # the CPU is not usable yet
        return task

    def _post_plan(self, cpu: int) -> None:
        try:
            plan: bytes | None = make_plan(self.rt, cpu)
        except Exception:      # a sysfs read failing mid-storm: cpuhp/N reads for itself
            plan = None
        post_ap_plan(self.rt, plan)

    def _finish_ap(self, cpu: int, task: Task | None, steps: list[Step], up: bool,
                   after_the_fact: bool) -> int:
        """Wait for the job posted to cpuhp/N (``task``); if cpuhp/N found itself off
        its CPU (or there is none), run ``steps`` here, after the fact; if it died,
        warn and run them here.  Return: 0 or a negative errno."""
        rc = None if task is None else wait_ap_job(self.rt, task)
        if rc is None:
            return run_steps(cpu, steps, up, rollback=False, after_the_fact=True,
                             on_cpu=getcpu())
        if rc == -errno.ESRCH:
            warn_on_once(True, f"cpuhp/{cpu} died: its AP callbacks ran on the control side")
            return run_steps(cpu, steps, up, rollback=not after_the_fact,
                             after_the_fact=after_the_fact, on_cpu=getcpu())
        return rc

    def _run_ap(self, cpu: int, steps: list[Step], up: bool, after_the_fact: bool) -> int:
        """``steps`` (an unnumbered job), on ``cpu`` in cpuhp/N; here (after the
        fact) if cpuhp/N found itself off its CPU.  Return: 0 or a negative errno."""
        if not steps:
            return 0
        task = self.cpuhp_threads.task(cpu)
        if task is not None:
            raw = pickle.dumps((steps, up), protocol=pickle.HIGHEST_PROTOCOL)
            post_ap_job(self.rt, cpu, raw, 0, False)
            kick_ap(task)
        return self._finish_ap(cpu, task, steps, up, after_the_fact)

    def _park_cpuhp_n(self, cpu: int) -> None:
        task = self.cpuhp_threads.task(cpu)
        if task is not None:
            kthread_park(task)

    def _unpark_cpuhp_n(self, cpu: int) -> None:
        task = self.cpuhp_threads.task(cpu)
        if task is not None:
            kthread_unpark(task)

    def _set_known(self, cpu: int, online: bool) -> None:
        if _trace.ENABLED:
            # the callbacks' trace events reach the file before anyone can see the
            # CPU's new state: a runtime ended just then kills cpuhp unflushed
            _trace.flush()
        self.known = self.known | {cpu} if online else self.known - {cpu}
        store_known(self.rt, self.known)

    # -- cpu_down / cpu_up ----------------------------------------------------------

    def down(self, cpu: int) -> int:
        """_cpu_down().  Return: 0 (also if already offline: nothing run), a
        negative errno after a rollback."""
        topo = self.rt.topology
        self.catch_up(cpu)
        if cpu not in self.known:
            return 0
        topo.check_not_last(cpu)
        t0 = time.monotonic_ns()
        rc = self._ap_section(cpu, False, False)
        if rc < 0:
            return rc
        t1 = time.monotonic_ns()
        self._park_cpuhp_n(cpu)
        try:
            topo.set_online(cpu, False)
        except OSError as exc:
            self._unpark_cpuhp_n(cpu)
            self._ap_section(cpu, True, False)
            return -(exc.errno or errno.EIO)
        self.watch.own_write(cpu)
        self._set_known(cpu, False)
        t2 = time.monotonic_ns()
        kthreads_offline_cpu(self.rt, cpu)
        run_steps(cpu, self._bp_down_steps(), False, rollback=False, on_cpu=getcpu())
        self._times(t1 - t0, t2 - t1, time.monotonic_ns() - t2)
        return 0

    def up(self, cpu: int) -> int:
        """_cpu_up().  Return: 0 (also if already online: nothing run), a negative
        errno after a rollback."""
        topo = self.rt.topology
        self.catch_up(cpu)
        if cpu in self.known:
            return 0
        t0 = time.monotonic_ns()
        here = getcpu()
        rc = run_steps(cpu, self._bp_up_steps(), True, on_cpu=here)
        if rc < 0:
            return rc
        task = self._early_ap(cpu)
        try:
            topo.set_online(cpu, True)
        except OSError as exc:
            if task is not None:
                withdraw_ap_job(self.rt)
                self._park_cpuhp_n(cpu)
            run_steps(cpu, self._bp_down_steps(), False, rollback=False, on_cpu=here)
            return -(exc.errno or errno.EIO)
        t1 = time.monotonic_ns()
        if task is not None:
            self._post_plan(cpu)
        self.watch.own_write(cpu)          # while cpuhp/N goes on
        _raw, _number, steps = self._ap_job(True)
        rc = self._finish_ap(cpu, task, steps, True, False)
        if rc < 0:
            self._park_cpuhp_n(cpu)
            try:
                topo.set_online(cpu, False)
                self.watch.own_write(cpu)
            except OSError:
                pass
            kthreads_offline_cpu(self.rt, cpu)
            run_steps(cpu, self._bp_down_steps(), False, rollback=False, on_cpu=here)
            return rc
        self._set_known(cpu, True)
        self._times(0, t1 - t0, time.monotonic_ns() - t1)
        return 0

    def _times(self, teardown: int, write: int, startup: int) -> None:
        buf, hp = self.rt.buf, self.hp
        L.pack_field(buf, hp, H, "teardown_ns", teardown)
        L.pack_field(buf, hp, H, "write_ns", write)
        L.pack_field(buf, hp, H, "startup_ns", startup)

    # -- changes made by someone else ------------------------------------------------

    def external(self, cpu: int, online: bool) -> None:
        """Replay a change of ``cpu`` made by someone else, after the fact."""
        noticed = time.monotonic_ns()
        here = getcpu()
        if online:
            if cpu in self.known:
                return
            run_steps(cpu, self._bp_up_steps(), True, rollback=False, after_the_fact=True,
                      on_cpu=here)
            task = self._start_ap(cpu)
            self._finish_ap(cpu, task, self._ap_job(True)[2], True, True)
            self._set_known(cpu, True)
        else:
            if cpu not in self.known:
                return
            run_steps(cpu, self._ap_down_steps(), False, rollback=False,
                      after_the_fact=True, on_cpu=here)
            self._park_cpuhp_n(cpu)
            self._set_known(cpu, False)
            try:
                kthreads_offline_cpu(self.rt, cpu)
            except Exception:      # a sysfs read failing mid-storm: still run the BP teardowns
                sys.stderr.write(f"kproc: cpuhp: re-affining after CPU {cpu} went offline "
                                 "failed:\n" + traceback.format_exc())
            run_steps(cpu, self._bp_down_steps(), False, rollback=False,
                      after_the_fact=True, on_cpu=here)
        L.pack_field(self.rt.buf, self.hp, H, "event_ns", noticed)
        self.rt.mem.fetch_add64(self.hp + H.events, 1)

    def replay(self, notes: list[tuple[int, bool, int]]) -> None:
        """The uevent notes (SEQNUM order), each change replayed once."""
        possible = self.rt.topology.possible()
        for n, (_seq, online, cpu) in enumerate(notes):
            if cpu in possible:
                try:
                    self.external(cpu, online)
                except BaseException:
                    self.watch.put_back(notes[n + 1:])     # replayed at the retry
                    raise

    def reconcile(self, online: frozenset[int]) -> None:
        """Catch up with the online mask (read once the kernel settled): the CPUs
        gone first, then those come, each ascending."""
        for cpu in sorted(self.known - online):
            self.external(cpu, False)
        for cpu in sorted(online - self.known):
            self.external(cpu, True)

    def catch_up(self, cpu: int) -> None:
        """Before a request on ``cpu``: the uevents so far replayed, then ``cpu``
        itself checked against the online mask (an outside change whose uevent
        the listener had not handed over yet is replayed now, and its uevent
        will be taken for one of cpuhp's own)."""
        self.replay(self.watch.take())
        if self.rt.topology.is_online(cpu) != (cpu in self.known):
            self.external(cpu, cpu not in self.known)
            self.watch.own_write(cpu)

    # -- states ---------------------------------------------------------------------

    def _issue(self, cpu: int, st: HotplugState, up: bool) -> int:
        """cpuhp_issue_call(): ``st``'s startup or teardown for ``cpu``: an AP
        state on the CPU (cpuhp/N), a BP state here."""
        step = st.up_step() if up else st.down_step()
        if is_ap_state(st.number):
            return self._run_ap(cpu, [step], up, False)
        return run_steps(cpu, [step], up, on_cpu=getcpu())

    def setup_state(self, section: int, name: str, startup: StateCallback | None,
                    teardown: StateCallback | None, calls: bool) -> int:
        """__cpuhp_setup_state(): a number of ``section`` reserved, the callbacks
        stored; with ``calls``, ``startup`` on every CPU at CPUHP_ONLINE,
        ascending; if one fails, ``teardown`` on those done, ascending
        (cpuhp_rollback_install walks for_each_present_cpu), and the state is
        dropped.  Return: the number; -ENOSPC; the failing startup's errno."""
        number = self.states.reserve(section)
        if number < 0:
            return number
        st = HotplugState(number, name, startup, teardown)
        self.states.add(st)
        if calls and startup is not None:
            done: list[int] = []
            for cpu in sorted(self.known):
                rc = self._issue(cpu, st, True)
                if rc < 0:
                    for back in done:
                        self._issue(back, st, False)
                    self.states.remove(number)
                    return rc
                done.append(cpu)
        return number

    def remove_state(self, number: int, calls: bool) -> None:
        """__cpuhp_remove_state(): with ``calls``, the teardown on every CPU at
        CPUHP_ONLINE, ascending; then the state dropped.
        Raises: ValueError (no such dynamic state)."""
        st = self.states.get(number)
        if calls and st.teardown is not None:
            for cpu in sorted(self.known):
                self._issue(cpu, st, False)
        self.states.remove(number)


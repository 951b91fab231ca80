"""A hypothesis state machine: queue / queue_delayed / mod / cancel / flush driven from the
caller against a small in-process model of the kernel's rules (kthread.c 6.15).

The worker is kept busy by a blocking work, so nothing runs between steps and
the model is exact; far timers (1000 s) never fire during an example, and the
``short_timer`` step arms a short one and waits past its expiry, so the model
knows where it lands.  ``run_all`` releases the worker, flushes, and compares
which works ran, in which order, with the model.
"""

import time

import pytest
from hypothesis import settings, strategies as st, HealthCheck
from hypothesis.stateful import RuleBasedStateMachine, rule, invariant, run_state_machine_as_test

import kproc
from fns import work as wfuncs
from fns.work import read_lines

FAR = 1000.0
N_WORK, N_DWORK = 3, 3


class WorkerModel(RuleBasedStateMachine):
    def __init__(self, path):
        super().__init__()
        self.path = path
        open(path, "w").close()
        self.worker = kproc.kthread_create_worker(0, "kmodel")
        self.works = [kproc.KthreadWork(wfuncs.log, (path, f"w{i}")) for i in range(N_WORK)]
        self.dworks = [kproc.KthreadDelayedWork(wfuncs.log, (path, f"d{i}"))
                       for i in range(N_DWORK)]
        self.release = self._block()
        self.queue = []            # model of the work list: tags in order
        self.timers = set()        # delayed works with an armed (far) timer
        self.tied = set()          # works ever queued (work->worker set)
        self.ran = []              # what the log must say

    def _block(self):
        started, release = kproc.Completion(), kproc.Completion()
        kproc.kthread_queue_work(self.worker,
                                 kproc.KthreadWork(wfuncs.block, (started, release)))
        kproc.wait_for_completion(started)
        return release

    def _pending(self, tag):
        return tag in self.queue or tag in self.timers

    def _remove(self, tag):
        if tag in self.queue:
            self.queue.remove(tag)
            return True
        if tag in self.timers:
            self.timers.discard(tag)
            return True
        return False

    def _arm(self, tag, delay):
        self.tied.add(tag)
        if delay == 0:
            self.queue.append(tag)
        else:
            self.timers.add(tag)

    @rule(i=st.integers(0, N_WORK - 1))
    def queue(self, i):
        tag = f"w{i}"
        expected = not self._pending(tag)
        assert kproc.kthread_queue_work(self.worker, self.works[i]) is expected
        if expected:
            self._arm(tag, 0)

    @rule(i=st.integers(0, N_DWORK - 1), delay=st.sampled_from([0, FAR]))
    def queue_delayed(self, i, delay):
        tag = f"d{i}"
        expected = not self._pending(tag)
        assert kproc.kthread_queue_delayed_work(self.worker, self.dworks[i], delay) is expected
        if expected:
            self._arm(tag, delay)

    @rule(i=st.integers(0, N_DWORK - 1), delay=st.sampled_from([0, FAR]))
    def mod(self, i, delay):
        tag = f"d{i}"
        expected = self._remove(tag) if tag in self.tied else False
        assert kproc.kthread_mod_delayed_work(self.worker, self.dworks[i], delay) is expected
        self._arm(tag, delay)

    @rule(i=st.integers(0, N_WORK - 1))
    def cancel(self, i):
        tag = f"w{i}"
        expected = self._remove(tag)
        assert kproc.kthread_cancel_work_sync(self.works[i]) is expected

    @rule(i=st.integers(0, N_DWORK - 1))
    def cancel_delayed(self, i):
        tag = f"d{i}"
        expected = self._remove(tag)
        assert kproc.kthread_cancel_delayed_work_sync(self.dworks[i]) is expected

    @rule(i=st.integers(0, N_WORK + N_DWORK - 1))
    def flush_idle(self, i):
        work = self.works[i] if i < N_WORK else self.dworks[i - N_WORK]
        tag = f"w{i}" if i < N_WORK else f"d{i - N_WORK}"
        if not self._pending(tag):
            kproc.kthread_flush_work(work)        # idle: must return at once

    @rule(i=st.integers(0, N_DWORK - 1))
    def short_timer(self, i):
        tag = f"d{i}"
        expected = not self._pending(tag)
        t0 = time.monotonic()
        assert kproc.kthread_queue_delayed_work(self.worker, self.dworks[i], 0.002) is expected
        while time.monotonic() < t0 + 0.004:
            time.sleep(0.001)
        if expected:
            self._arm(tag, 0)                    # expired: on the list from now on

    @rule()
    def run_all(self):
        kproc.complete(self.release)
        kproc.kthread_flush_worker(self.worker)
        self.ran += self.queue
        self.queue = []
        assert read_lines(self.path) == self.ran
        self.release = self._block()

    @invariant()
    def counters_agree(self):
        assert self.worker.queued == len(self.queue)
        assert self.worker.delayed == len(self.timers)

    def teardown(self):
        for d in self.dworks:
            kproc.kthread_cancel_delayed_work_sync(d)
        kproc.complete(self.release)
        kproc.kthread_destroy_worker(self.worker)


@pytest.mark.timeout(240)
def test_worker_agrees_with_the_kernel_model(rt, tmp_path):
    counter = iter(range(10**6))

    def factory():
        return WorkerModel(str(tmp_path / f"log{next(counter)}"))
    run_state_machine_as_test(factory, settings=settings(
        max_examples=60, stateful_step_count=40, deadline=None,
        suppress_health_check=list(HealthCheck)))

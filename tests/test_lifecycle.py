"""kthread lifecycle (SPEC §4 "Lifecycle", kthread.c 6.15)."""

import errno
import os
import pickle

import psutil
import pytest

import kproc
from fns import kthread as kfuncs
from helpers import wait_until

pytestmark = pytest.mark.timeout(30)


def test_created_kthread_sleeps_uninterruptible_until_woken(rt):
    done = kproc.Completion()
    task = kproc.kthread_create(kfuncs.complete_then_return, (done, 3), "sleeper")
    assert kproc.task_state(task) == kproc.TASK_UNINTERRUPTIBLE
    assert kproc.wait_for_completion_timeout(done, 0.2) == 0    # threadfn not called
    assert kproc.wake_up_process(task) is True
    assert kproc.wait_for_completion_timeout(done, 5) > 0
    assert kproc.kthread_stop(task) == 3


def test_kthread_is_a_child_of_kthreadd_with_its_comm(rt):
    task = kproc.kthread_create(kfuncs.ret_value, 0, "worker/%d:%s", 3, "x")
    proc = psutil.Process(task.pid)
    assert proc.ppid() == rt.kthreadd_pid
    assert psutil.Process(rt.kthreadd_pid).name() == "kthreadd"
    assert proc.name() == "worker/3:x" == task.comm
    assert kproc.kthread_stop(task) == -errno.EINTR


def test_comm_is_cut_to_15_bytes_but_full_name_is_kept(rt):
    name = "a-very-long-kthread-name-indeed"
    task = kproc.kthread_create(kfuncs.ret_value, 0, name)
    assert task.comm == name[:15]
    assert psutil.Process(task.pid).name() == name[:15]
    assert kproc.get_kthread_comm(task) == name
    kproc.kthread_stop(task)


def test_stop_returns_threadfn_result(rt):
    task = kproc.kthread_run(kfuncs.ret_value, 1234, "ret")
    wait_until(lambda: kproc.task_state(task) == kproc.TASK_DEAD)
    assert kproc.kthread_stop(task) == 1234


def test_threadfn_returning_none_gives_zero(rt):
    task = kproc.kthread_run(kfuncs.ret_none, None, "none")
    wait_until(lambda: kproc.task_state(task) == kproc.TASK_DEAD)
    assert kproc.kthread_stop(task) == 0


def test_stop_of_never_woken_kthread_returns_eintr_without_running_it(rt):
    done = kproc.Completion()
    task = kproc.kthread_create(kfuncs.complete_then_return, (done, 1), "never")
    assert kproc.kthread_stop(task) == -errno.EINTR
    assert not kproc.completion_done(done)


def test_kthread_exit_value_is_returned_by_stop(rt):
    task = kproc.kthread_run(kfuncs.exit_with, -77, "exiter")
    wait_until(lambda: kproc.task_state(task) == kproc.TASK_DEAD)
    assert kproc.kthread_stop(task) == -77


def test_kthread_complete_and_exit(rt):
    comp = kproc.Completion()
    task = kproc.kthread_run(kfuncs.complete_and_exit, (comp, 9), "cae")
    kproc.wait_for_completion(comp)
    assert kproc.kthread_stop(task) == 9


def test_exception_gives_efault_and_keeps_traceback(capfd):
    # Started in the test body: kthreads write to the stderr kthreadd inherited.
    with kproc.start():
        task = kproc.kthread_run(kfuncs.raise_error, "boom-xyz", "raiser")
        wait_until(lambda: kproc.task_state(task) == kproc.TASK_DEAD)
        assert kproc.kthread_stop(task) == -errno.EFAULT
        assert "RuntimeError: boom-xyz" in task.exception
    err = capfd.readouterr().err
    assert "kthread 'raiser'" in err and "boom-xyz" in err


def test_stop_after_kthread_exited_on_its_own_returns_result(rt):
    task = kproc.kthread_run(kfuncs.ret_value, 5, "early")
    wait_until(lambda: kproc.task_state(task) == kproc.TASK_DEAD)
    assert kproc.kthread_stop(task) == 5


def test_canonical_loop_is_stopped(rt):
    started = kproc.Completion()
    task = kproc.kthread_run(kfuncs.loop_until_stop, started, "loop")
    kproc.wait_for_completion(started)
    wait_until(lambda: kproc.task_state(task) == kproc.TASK_INTERRUPTIBLE)
    assert kproc.kthread_stop(task) == 7


def test_wake_up_process_return_values(rt):
    started = kproc.Completion()
    task = kproc.kthread_run(kfuncs.loop_until_stop, started, "wake")
    kproc.wait_for_completion(started)
    wait_until(lambda: kproc.task_state(task) == kproc.TASK_INTERRUPTIBLE)
    assert kproc.wake_up_process(task) is True
    kproc.kthread_stop(task)
    assert kproc.wake_up_process(task) is False      # dead


def test_no_lost_wakeups_between_set_current_state_and_schedule(rt):
    flag, ack = kproc.Completion(), kproc.Completion()
    task = kproc.kthread_run(kfuncs.lost_wakeup_loop, (flag, ack), "nolost")
    rounds = 300
    for _ in range(rounds):
        kproc.complete(flag)
        kproc.wake_up_process(task)
        assert kproc.wait_for_completion_timeout(ack, 5) > 0, "a wake-up was lost"
    assert kproc.kthread_stop(task) == rounds


def test_new_kthread_runs_sched_other_on_housekeeping_cpus(rt):
    kthreadd = rt.kthreadd_pid
    os.sched_setaffinity(kthreadd, {0})
    task = kproc.kthread_run(kfuncs.affinity_mask, None, "aff")
    wait_until(lambda: kproc.task_state(task) == kproc.TASK_INTERRUPTIBLE)
    assert os.sched_getscheduler(task.pid) == os.SCHED_OTHER
    mask = kproc.kthread_stop(task)
    cpus = {c for c in range(mask.bit_length()) if mask >> c & 1}
    assert cpus == set(rt.topology.applicable(rt.housekeeping()))


def test_kthreads_see_callers_env_cwd_and_path_at_start(tmp_path, monkeypatch):
    monkeypatch.setenv("KPROC_TEST_ENV", "yes")
    monkeypatch.chdir(tmp_path)
    with kproc.start():
        task = kproc.kthread_run(kfuncs.report_env, ("KPROC_TEST_ENV", str(tmp_path),
                                                     os.path.dirname(os.path.dirname(kfuncs.__file__))),
                                 "env")
        wait_until(lambda: kproc.task_state(task) == kproc.TASK_DEAD)
        assert kproc.kthread_stop(task) == 1


def test_task_handles_travel_to_other_kthreads(rt):
    started = kproc.Completion()
    victim = kproc.kthread_run(kfuncs.loop_until_stop, started, "victim")
    kproc.wait_for_completion(started)
    stopper = kproc.kthread_run(kfuncs.stop_other, victim, "stopper")
    wait_until(lambda: kproc.task_state(stopper) == kproc.TASK_DEAD)
    assert kproc.kthread_stop(stopper) == 7
    assert kproc.task_state(victim) == kproc.TASK_DEAD


def test_a_kthread_can_create_kthreads(rt):
    comp = kproc.Completion()
    task = kproc.kthread_run(kfuncs.create_child, (comp,), "parent")
    kproc.wait_for_completion(comp)
    assert kproc.kthread_stop(task) == 11


def test_kthread_stop_on_itself_is_refused(rt):
    task = kproc.kthread_run(kfuncs.stop_self, None, "selfstop")
    wait_until(lambda: kproc.task_state(task) == kproc.TASK_DEAD)
    assert kproc.kthread_stop(task) == -errno.EDEADLK


def test_current_is_none_outside_a_kthread_and_the_task_inside(rt):
    assert kproc.current() is None
    task = kproc.kthread_run(kfuncs.stop_other, None, "x")  # stop_other(None) raises
    wait_until(lambda: kproc.task_state(task) == kproc.TASK_DEAD)
    assert kproc.kthread_stop(task) == -errno.EFAULT
    assert "must be a kproc.Task" in task.exception


def test_data_func_and_probe(rt):
    data = {"k": [1, 2, 3]}
    task = kproc.kthread_create(kfuncs.data_identity, data, "data")
    assert kproc.kthread_data(task) == data
    assert kproc.kthread_probe_data(task) == data
    assert kproc.kthread_func(task) is kfuncs.data_identity
    assert kproc.kthread_probe_data("not a task") is None
    kproc.wake_up_process(task)
    wait_until(lambda: kproc.task_state(task) == kproc.TASK_DEAD)
    assert kproc.kthread_stop(task) == 1       # the kthread sees the very object it got


def test_task_is_picklable_within_the_runtime(rt):
    task = kproc.kthread_create(kfuncs.ret_value, 0, "pick")
    again = pickle.loads(pickle.dumps(task))
    assert again == task and again.pid == task.pid
    kproc.kthread_stop(again)


def test_functions_from_main_work_like_forkserver(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(
        "import kproc\n"
        "def fn(c):\n    kproc.complete(c)\n    return 42\n"
        "if __name__ == '__main__':\n"
        "    with kproc.start():\n"
        "        c = kproc.Completion()\n"
        "        t = kproc.kthread_run(fn, c, 'mainfn')\n"
        "        kproc.wait_for_completion(c)\n"
        "        print('result', kproc.kthread_stop(t))\n")
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(kproc.__file__)))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=20, env=env)
    assert "result 42" in out.stdout, out.stderr


def test_implicit_default_runtime_starts_on_first_call():
    assert kproc._core.runtime.current_runtime() is None
    task = kproc.kthread_run(kfuncs.ret_value, 8, "implicit")
    wait_until(lambda: kproc.task_state(task) == kproc.TASK_DEAD)
    assert kproc.kthread_stop(task) == 8
    assert kproc._core.runtime.current_runtime() is not None


def test_start_twice_is_refused(rt):
    with pytest.raises(kproc.KthreadError) as ei:
        kproc.start()
    assert ei.value.errno == errno.EBUSY

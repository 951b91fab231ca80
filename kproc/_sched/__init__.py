"""Scheduling on shared memory (kernel/sched): ``task`` (Task handles, task
states), ``schedule`` (set_current_state, schedule(), wake-ups, sleeps),
``completion`` (completions), ``policy`` (sched_set_fifo,
sched_set_fifo_low, sched_set_normal).  Runs in every process of a runtime."""

"""Scheduling on shared memory (kernel/sched): ``task`` (Task handles, task
states), ``schedule`` (set_current_state, schedule(), wake-ups, sleeps),
``completion`` (completions).  Runs in every process of a runtime."""

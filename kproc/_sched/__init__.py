"""_sched."""

"""kproc benchmarks: every comparison side by side in one run (SPEC §7)."""

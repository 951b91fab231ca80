"""_kthread."""

"""_workqueue."""

"""Module-level functions the tests pass by reference.

threadfns (``kthread``), works (``work``), hotplug callbacks (``hotplug``).
"""

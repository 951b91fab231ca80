"""CPU hotplug (kernel/cpu.c, kernel/smpboot.c), one mechanism per module.

In the caller: ``api`` (cpu_down, cpu_up, cpuhp_setup_state,
cpuhp_remove_state: checks, starting cpuhp, the mailbox), ``smpboot``
(SmpHotplugThread, its registration), ``cpumask`` (the masks),
``experiment`` (the timed cycle of ``kproc hotplug`` and the benchmark).
In the cpuhp kthread: ``cpuhp`` (the state machine), ``callbacks`` (the
states, rollback), ``hotplug_threads`` (smpboot's registrations and their
walks), ``uevent`` (the netlink listener).  In the per-CPU threads:
``smpboot_thread`` (the smpboot loop).  Shared by all: ``record`` (where
hotplug lives in the arena).
"""

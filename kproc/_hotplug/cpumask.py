"""CPU masks of the current runtime (kernel: cpu_possible_mask, cpu_present_mask,
cpu_online_mask, housekeeping_cpumask(HK_TYPE_KTHREAD), cpu_to_node,
cpumask_of_node).

They read the runtime's ``sysfs_root`` (``/sys``, or a tree made by
``fake_sysfs``) on every call: CPU hotplug changes them underneath, so a
mask is a snapshot, never a promise (the kernel's readers hold
cpus_read_lock() for that; here only the cpuhp kthread's view, ``known``, is
stable between its own steps).  Masks are ``frozenset[int]``.  Each call
starts the default runtime if there is none.
Context: the caller, any process of the runtime; never blocks.
"""

from __future__ import annotations

from .._core.runtime import get_runtime

__all__ = ["cpu_possible_mask", "cpu_present_mask", "cpu_online_mask",
           "housekeeping_cpumask", "cpu_to_node", "cpumask_of_node"]


def cpu_possible_mask() -> frozenset[int]:
    """CPUs that can ever be online.  Context: any.  Return: the mask."""
    return get_runtime().topology.possible()


def cpu_present_mask() -> frozenset[int]:
    """CPUs present in the system.  Context: any.  Return: the mask."""
    return get_runtime().topology.present()


def cpu_online_mask() -> frozenset[int]:
    """CPUs online now.  Context: any.  Return: the mask."""
    return get_runtime().topology.online()


def housekeeping_cpumask() -> frozenset[int]:
    """Online CPUs minus ``isolated`` and ``nohz_full``, within kthreadd's allowed
    set: where unbound kthreads run.  Context: any.  Return: the mask."""
    return get_runtime().housekeeping()


def cpu_to_node(cpu: int) -> int:
    """The NUMA node of ``cpu``.  Context: any.  Return: the node number.
    Raises: TypeError (not an int); ValueError (not a possible CPU)."""
    topo = get_runtime().topology
    topo.check_possible(cpu)
    return topo.cpu_to_node(cpu)


def cpumask_of_node(node: int) -> frozenset[int]:
    """CPUs of ``node`` (NUMA_NO_NODE: the online CPUs).  Context: any.
    Return: the mask.  Raises: ValueError for a node that does not exist;
    TypeError for a non-int."""
    if isinstance(node, bool) or not isinstance(node, int):
        raise TypeError(f"node must be an int, not {type(node).__name__}")
    return get_runtime().topology.cpumask_of_node(node)

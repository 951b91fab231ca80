"""CPU masks of the current runtime (kernel: cpu_possible_mask, cpu_present_mask,
cpu_online_mask, housekeeping_cpumask(HK_TYPE_KTHREAD), cpu_to_node,
cpumask_of_node).

They read the runtime's ``sysfs_root`` (``/sys``, or a tree made by
``fake_sysfs``) on every call: CPU hotplug changes them underneath.  Masks are
``frozenset[int]``.  Each call starts the default runtime if there is none.
"""

from .._core.runtime import get_runtime

__all__ = ["cpu_possible_mask", "cpu_present_mask", "cpu_online_mask",
           "housekeeping_cpumask", "cpu_to_node", "cpumask_of_node"]


def cpu_possible_mask():
    """CPUs that can ever be online.  Context: any."""
    return get_runtime().topology.possible()


def cpu_present_mask():
    """CPUs present in the system.  Context: any."""
    return get_runtime().topology.present()


def cpu_online_mask():
    """CPUs online now.  Context: any."""
    return get_runtime().topology.online()


def housekeeping_cpumask():
    """Online CPUs minus ``isolated`` and ``nohz_full``, within kthreadd's allowed
    set: where unbound kthreads run.  Context: any."""
    return get_runtime().housekeeping()


def cpu_to_node(cpu):
    """The NUMA node of ``cpu``.  Raises: ValueError/TypeError unless possible."""
    topo = get_runtime().topology
    topo.check_possible(cpu)
    return topo.cpu_to_node(cpu)


def cpumask_of_node(node):
    """CPUs of ``node`` (NUMA_NO_NODE: the online CPUs).  Raises: ValueError for a
    node that does not exist; TypeError for a non-int."""
    if isinstance(node, bool) or not isinstance(node, int):
        raise TypeError(f"node must be an int, not {type(node).__name__}")
    return get_runtime().topology.cpumask_of_node(node)

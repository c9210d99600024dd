"""How many CPUs this process may use: the training stack sizes its thread and process pools by it."""

from __future__ import annotations

from joblib import cpu_count


def cpu_budget() -> int:
    """The CPUs this process may use.

    joblib's count honours the cgroup CPU quota (a Kubernetes CPU limit) and the CPU affinity, where
    `os.cpu_count()` reports every core of the node: pools sized by it oversubscribe a pod, and LightGBM's
    spin-waiting OpenMP threads then make a run several times slower.
    """
    return max(1, int(cpu_count()))

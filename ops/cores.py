"""How many CPU cores this process may use: its CPU affinity, capped by its cgroup's CPU limit.

``os.sched_getaffinity`` is the cpuset: in a container without exclusive cores (Kubernetes without
the static CPU manager policy, ``docker run --cpus``) that is every core of the node, while the CFS
quota (the pod's ``resources.limits.cpu``) lets the process run only a few cores' worth of time per
period. Sizing onnxruntime's thread pools by the affinity alone there starts, say, 64 threads in a
pod limited to 2 CPUs; they share 2 cores' quota, and the kernel throttles the whole pod for most of
every 100 ms period. ``available_cores`` is the smaller of the two, the quota rounded up (as Go's
runtime sizes GOMAXPROCS), at least 1.

Reads cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), from the
process's own cgroup up to the root of the hierarchy (the tightest limit wins: a pod's limit sits
on the pod's cgroup as well as the container's). No file, or an unreadable one, means no limit.
Imports nothing from fleetserve.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _dirs(mount: Path, cgroup_path: str) -> list[Path]:
    """The process's cgroup directory under ``mount`` and each parent up to ``mount``.

    In a container with its own cgroup namespace the path reads ``/``; without one it is the host's
    path, which the container does not see, and ``mount`` itself is then the container's cgroup.
    """
    leaf = mount / cgroup_path.strip("/")
    if not leaf.is_dir():
        return [mount]
    dirs = [leaf]
    while dirs[-1] != mount and mount in dirs[-1].parents:
        dirs.append(dirs[-1].parent)
    return dirs


def _v2_limit(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")  # "max 100000" or "200000 100000" (quota, period in µs)
    if not text:
        return None
    fields = text.split()
    if fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(directory: Path) -> float | None:
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    try:
        q, p = int(quota or "-1"), int(period or "0")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_cpu_limit(root: Path | None = None, proc_cgroup: Path | None = None) -> float | None:
    """The CPU limit of this process's cgroup in cores (1.5: one and a half), or None when there is none."""
    root = CGROUP_ROOT if root is None else root
    text = _read(PROC_SELF_CGROUP if proc_cgroup is None else proc_cgroup)
    if text is None:
        return None  # not Linux, or /proc not mounted
    v1_path = v2_path = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1_path = path
    limits: list[float] = []
    if v1_path is not None:  # v1, or hybrid: the cpu controller is on a v1 hierarchy
        for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            mount = root / name
            if (mount / "cpu.cfs_quota_us").exists():
                limits += [x for d in _dirs(mount, v1_path) if (x := _v1_limit(d)) is not None]
                break
    elif v2_path is not None and (root / "cgroup.controllers").exists():
        limits += [x for d in _dirs(root, v2_path) if (x := _v2_limit(d)) is not None]
    return min(limits) if limits else None


def available_cores(root: Path | None = None, proc_cgroup: Path | None = None) -> int:
    """The cores this process may run on (its affinity), capped by its cgroup's CPU limit rounded up."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def describe_cores() -> str:
    """For the start-up log: what ``available_cores`` counts, and from what."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    quota = "none" if limit is None else f"{limit:g} CPUs"
    return f"{available_cores()} cores (CPU affinity: {affinity}, cgroup CPU limit: {quota})"

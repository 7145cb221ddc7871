"""ops/cores.py on fake cgroup file systems: the cores onnxruntime's threads are sized for.

Each test writes the files a container runtime mounts (cgroup v2's cpu.max, v1's cfs quota and
period) and the process's /proc/self/cgroup into tmp_path; the affinity is a 64-core node's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import ops.cores as cores_module
from ops.cores import available_cores, cgroup_cpu_limit
from kernels.ort import default_intra_op_threads

NODE_CORES = 64


@pytest.fixture(autouse=True)
def node_with_64_cores(monkeypatch):
    monkeypatch.setattr(cores_module.os, "sched_getaffinity", lambda pid: set(range(NODE_CORES)), raising=False)


def v2(tmp_path: Path, limits: dict[str, str], own: str = "/") -> tuple[Path, Path]:
    """A cgroup v2 tree: ``limits`` maps a cgroup path ("/" the root) to its cpu.max line."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    for path, line in limits.items():
        directory = root / path.strip("/")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cpu.max").write_text(line + "\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(f"0::{own}\n")
    return root, proc


def v1(tmp_path: Path, quota: str, period: str = "100000", own: str = "/") -> tuple[Path, Path]:
    """A cgroup v1 (hybrid) mount: the cpu controller at cpu,cpuacct, the container's cgroup at its root."""
    root = tmp_path / "cgroup"
    mount = root / "cpu,cpuacct"
    mount.mkdir(parents=True)
    (root / "unified").mkdir()
    (mount / "cpu.cfs_quota_us").write_text(quota + "\n")
    (mount / "cpu.cfs_period_us").write_text(period + "\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(f"12:memory:{own}\n4:cpu,cpuacct:{own}\n0::{own}\n")
    return root, proc


@pytest.mark.parametrize("line, limit, cores", [
    ("200000 100000", 2.0, 2),  # resources.limits.cpu: "2" (the kubelet's quota is CPUs x 100 ms)
    ("400000 100000", 4.0, 4),
    ("150000 100000", 1.5, 2),  # rounded up
    ("50000 100000", 0.5, 1),  # 500m: at least one
    ("max 100000", None, NODE_CORES),  # no limit: the affinity
])
def test_cgroup_v2_cpu_max_caps_the_affinity(tmp_path, line, limit, cores):
    root, proc = v2(tmp_path, {"/": line})
    assert cgroup_cpu_limit(root, proc) == limit
    assert available_cores(root, proc) == cores


def test_cgroup_v2_the_tightest_limit_on_the_way_to_the_root_wins(tmp_path):
    """Without a cgroup namespace the process sees the host's tree: the pod's cgroup limits too."""
    root, proc = v2(tmp_path, {"/": "max 100000", "/kubepods/pod1": "300000 100000",
                               "/kubepods/pod1/ctr": "max 100000"}, own="/kubepods/pod1/ctr")
    assert cgroup_cpu_limit(root, proc) == 3.0
    assert available_cores(root, proc) == 3


def test_cgroup_v2_a_host_path_the_container_cannot_see_reads_the_mount_root(tmp_path):
    root, proc = v2(tmp_path, {"/": "200000 100000"}, own="/kubepods/burstable/pod1/ctr")
    assert available_cores(root, proc) == 2


@pytest.mark.parametrize("quota, period, cores", [
    ("200000", "100000", 2),
    ("250000", "100000", 3),
    ("-1", "100000", NODE_CORES),  # no quota
])
def test_cgroup_v1_cfs_quota_caps_the_affinity(tmp_path, quota, period, cores):
    root, proc = v1(tmp_path, quota, period, own="/kubepods/pod1/ctr")
    assert available_cores(root, proc) == cores


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "none", tmp_path / "no_proc") is None
    assert available_cores(tmp_path / "none", tmp_path / "no_proc") == NODE_CORES
    root, proc = v2(tmp_path, {"/": "garbage"})
    assert available_cores(root, proc) == NODE_CORES


def test_onnxruntime_threads_default_to_the_limited_cores_not_the_node(tmp_path, monkeypatch):
    """A pod limited to 2 CPUs on a 64-core node: 2 intra-op threads, shared by the instances."""
    root, proc = v2(tmp_path, {"/": "200000 100000"})
    monkeypatch.setattr(cores_module, "CGROUP_ROOT", root)
    monkeypatch.setattr(cores_module, "PROC_SELF_CGROUP", proc)
    assert default_intra_op_threads(1) == 2
    assert default_intra_op_threads(2) == 1
    assert "2 cores (CPU affinity: 64, cgroup CPU limit: 2 CPUs)" == cores_module.describe_cores()

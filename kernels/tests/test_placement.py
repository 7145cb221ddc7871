"""Where instances go: Triton's instance groups over the visible GPUs, or all on the CPU."""

from __future__ import annotations

import pytest

from ops.errors import ConfigError

from kernels.placement import GroupPlacement, cpu_instances, describe_plans, gpu_instance_devices, plan_sessions

G = GroupPlacement
GPU_CHAIN = ("CUDAExecutionProvider", "CPUExecutionProvider")


@pytest.mark.parametrize(("groups", "visible", "devices"), [
    # no gpus: count on each visible GPU (Triton's KIND_GPU, and KIND_AUTO where GPUs exist)
    ((G(),), 1, (0,)),
    ((G(),), 8, (0, 1, 2, 3, 4, 5, 6, 7)),
    ((G(2),), 2, (0, 0, 1, 1)),
    # gpus listed: count on each of them, whatever is visible
    ((G(2, (0, 1)),), 8, (0, 0, 1, 1)),
    ((G(1, (3,)),), 1, (3,)),
    ((G(1, (2,)), G(2, (0,))), 4, (2, 0, 0)),
    # both kinds of group, in config order
    ((G(1, (1,)), G(2)), 3, (1, 0, 0, 1, 1, 2, 2)),
])
def test_a_group_without_gpus_has_count_instances_on_each_visible_gpu(groups, visible, devices):
    assert gpu_instance_devices(groups, visible) == devices


def test_the_visible_gpus_cannot_multiply_a_group_past_the_instance_bound():
    assert len(gpu_instance_devices((G(128),), 8)) == 1024
    with pytest.raises(ConfigError, match="make 1032 instances on the 8 visible GPUs .* at most 1024 run"):
        gpu_instance_devices((G(129),), 8)


def test_gpu_placement_needs_a_visible_gpu():
    with pytest.raises(ValueError, match="at least one visible GPU"):
        gpu_instance_devices((G(2),), 0)


@pytest.mark.parametrize(("groups", "instances"), [
    ((G(),), 1),
    ((G(4),), 4),  # no gpus: count in all, however many GPUs the machine has
    ((G(2, (0, 1)),), 4),  # count per listed GPU, as written
    ((G(1, (2,)), G(2)), 3),
])
def test_on_the_cpu_a_group_is_count_per_listed_gpu_at_least_count(groups, instances):
    assert cpu_instances(groups) == instances


@pytest.mark.parametrize(("groups", "visible", "described"), [
    ((G(2),), 2, "instances: 2 on GPU 0, 2 on GPU 1"),
    ((G(1, (1,)), G(1)), 2, "instances: 2 on GPU 1, 1 on GPU 0"),
])
def test_each_visible_gpu_gets_one_session_for_its_instances(groups, visible, described):
    plans = plan_sessions(GPU_CHAIN, gpu_instance_devices(groups, visible))
    assert describe_plans(plans) == described
    assert sum(plan.instances for plan in plans) == len(gpu_instance_devices(groups, visible))

"""Where a model version's instances run, and the onnxruntime sessions that serve them.

Triton's meaning of an instance group (model_config.proto, ModelInstanceGroup): ``count`` instances
on each GPU ``gpus`` lists; a group that lists none is as if it listed every visible GPU (KIND_GPU,
and KIND_AUTO where GPUs exist). Where only the CPU runs the model, a group is ``count`` instances
per GPU it lists (at least ``count``), all served by one session.

Pure functions, tested with tables and no GPU. Imports only ops.errors from fleetserve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from ops.errors import ConfigError

CPU_PROVIDER = "CPUExecutionProvider"
MAX_INSTANCES = 1024  # instances a model version may run: each is a thread that runs batches


@dataclass(frozen=True)
class GroupPlacement:
    """One instance group as the kernel needs it: ``count`` per GPU in ``gpus``; none listed: every visible GPU."""

    count: int = 1
    gpus: tuple[int, ...] = ()


def cpu_instances(groups: Sequence[GroupPlacement]) -> int:
    """Instances where only the CPU runs the model: each group's ``count`` per GPU it lists, at least ``count``."""
    return sum(group.count * max(1, len(group.gpus)) for group in groups)


def gpu_instance_devices(groups: Sequence[GroupPlacement], visible_gpus: int) -> tuple[int, ...]:
    """The GPU of each instance with a GPU provider, in config order: a group's ``count`` on each GPU it lists in
    turn, or on each of the ``visible_gpus`` (device ids 0 .. visible_gpus - 1) when it lists none.

    Raises ``ConfigError`` past ``MAX_INSTANCES`` in all (a config is held to it as written; here the visible
    GPUs multiply the groups that list none)."""
    if visible_gpus < 1:
        raise ValueError("placing instances on GPUs needs at least one visible GPU")
    devices = tuple(
        gpu for group in groups for gpu in (group.gpus or range(visible_gpus)) for _ in range(group.count)
    )
    if len(devices) > MAX_INSTANCES:
        raise ConfigError(f"the instance groups make {len(devices)} instances on the {visible_gpus} visible GPUs "
                          f"(a group without gpus has its count on each); at most {MAX_INSTANCES} run, each a thread: "
                          "give smaller counts, or list the gpus")
    return devices


@dataclass(frozen=True)
class SessionPlan:
    """One session to create: the GPU it runs on (None: CPU only), how many instances it serves, and the
    options of each of its providers (in the order of the providers)."""

    device_id: int | None
    instances: int
    provider_options: tuple[dict[str, str], ...]


def plan_sessions(
    providers: Sequence[str], device_ids: Sequence[int], options: Mapping[str, Mapping[str, str]] | None = None
) -> tuple[SessionPlan, ...]:
    """The sessions for instances on ``device_ids`` (one id per instance) with ``providers`` (onnxruntime names).

    With a GPU provider in the chain: one session per GPU, in the order the instances name them, serving
    that GPU's instances, each GPU provider told its ``device_id`` on top of its ``options`` (by provider
    name, from the config). With the CPU provider alone (a KIND_CPU group, or a build or machine without
    a GPU provider): one session serving every instance (only the number of ids counts).
    """
    given = options or {}
    if not device_ids:
        raise ValueError("plan_sessions needs at least one instance")
    if all(p == CPU_PROVIDER for p in providers):
        return (SessionPlan(None, len(device_ids), tuple({} for _ in providers)),)
    per_gpu: dict[int, int] = {}
    for gpu in device_ids:
        per_gpu[gpu] = per_gpu.get(gpu, 0) + 1

    def on(gpu: int) -> tuple[dict[str, str], ...]:
        return tuple({} if p == CPU_PROVIDER else {**given.get(p, {}), "device_id": str(gpu)} for p in providers)

    return tuple(SessionPlan(gpu, count, on(gpu)) for gpu, count in per_gpu.items())


def describe_plans(plans: Sequence[SessionPlan]) -> str:
    """For the log: "4 instances" on the CPU, "instances: 2 on GPU 0, 2 on GPU 1" with a GPU provider."""
    if len(plans) == 1 and plans[0].device_id is None:
        return f"{plans[0].instances} instance{'' if plans[0].instances == 1 else 's'}"
    return "instances: " + ", ".join(f"{p.instances} on GPU {p.device_id}" for p in plans)

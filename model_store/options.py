"""The serving options of a model config: versions, dynamic batching, instances, accelerators.

Each function reads one section of the parsed config.pbtxt message and returns
the typed value ``ModelConfig`` holds, or raises ``ConfigError`` naming the
file (``source``) and the field and saying what is accepted. Pure functions;
used by model_store/complete.py, and ``version_policy`` also by
model_store/repository.py (the registry selects versions before it loads any).

Imports model_store.config, the generated config messages and ops.errors only;
must not import server, batching, kernels or grpc.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_store.config import DynamicBatching, InstanceKind, VersionPolicy
from model_store.protos import model_config_pb2 as pb
from ops.errors import ConfigError

GPU_ACCELERATORS = ("tensorrt", "cuda")  # gpu_execution_accelerator names, matched case-insensitively
CPU_ACCELERATORS = ("cpu",)  # cpu_execution_accelerator names


@dataclass(frozen=True)
class Where:
    """Which model and file a message is about; makes the ``ConfigError``."""

    model: str
    source: str

    def error(self, field: str, text: str) -> ConfigError:
        return ConfigError(f"{self.source}: {field}: {text}", model=self.model, source=self.source, field=field)


@dataclass(frozen=True)
class Instances:
    """The instance_group section, summed: how many model instances, of what kind, on which GPUs."""

    count: int = 1
    kind: InstanceKind = InstanceKind.AUTO
    gpus: tuple[int, ...] = ()


def version_policy(msg: pb.ModelConfig, where: Where) -> VersionPolicy:
    """version_policy; absent: the latest version only."""
    policy = msg.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy(kind="all")
    if choice == "specific":
        versions = tuple(sorted(set(policy.specific.versions)))
        if not versions or versions[0] < 0:
            raise where.error("version_policy.specific.versions", f"are {list(versions)}; list version numbers >= 0")
        return VersionPolicy(kind="specific", versions=versions)
    if choice == "latest":
        if policy.latest.num_versions < 1:
            raise where.error("version_policy.latest.num_versions", "must be at least 1")
        return VersionPolicy(kind="latest", num_versions=policy.latest.num_versions)
    return VersionPolicy()


def dynamic_batching(msg: pb.ModelConfig, max_batch_size: int, completed: bool, where: Where) -> DynamicBatching | None:
    """dynamic_batching, with Triton's meaning: values not written are 0 (a queue delay of 0 waits for nothing).

    Absent: ``DynamicBatching()`` (fleetserve's defaults) if completion chose
    ``max_batch_size`` (``completed``), else None: requests run one by one.
    Preferred sizes come back sorted and unique.
    """
    if not msg.HasField("dynamic_batching"):
        return DynamicBatching() if completed else None
    db = msg.dynamic_batching
    if max_batch_size == 0:
        raise where.error("dynamic_batching", "needs a batching model (max_batch_size > 0), but max_batch_size is 0")
    policy = db.default_queue_policy
    unsupported = {
        "priority_levels": db.priority_levels,
        "default_priority_level": db.default_priority_level,
        "priority_queue_policy": len(db.priority_queue_policy),
        "default_queue_policy.timeout_action": policy.timeout_action,
        "default_queue_policy.default_timeout_microseconds": policy.default_timeout_microseconds,
        "default_queue_policy.allow_timeout_override": policy.allow_timeout_override,
    }
    for name, value in unsupported.items():
        if value:
            raise where.error(f"dynamic_batching.{name}", "is not supported by fleetserve; remove it")
    sizes = tuple(sorted(set(db.preferred_batch_size)))
    for size in sizes:
        if not 0 < size <= max_batch_size:
            raise where.error(
                "dynamic_batching.preferred_batch_size", f"{size} is outside 1..max_batch_size ({max_batch_size})"
            )
    return DynamicBatching(
        max_queue_delay_us=db.max_queue_delay_microseconds,
        preferred_batch_size=sizes,
        preserve_ordering=db.preserve_ordering,
        max_queue_size=policy.max_queue_size,
    )


def instances(msg: pb.ModelConfig, where: Where) -> Instances:
    """instance_group summed; a group's ``count`` (0 means 1) is per listed GPU, as in Triton."""
    if not msg.instance_group:
        return Instances()
    count = 0
    kinds: set[InstanceKind] = set()
    gpus: set[int] = set()
    for index, group in enumerate(msg.instance_group):
        field = f"instance_group[{index}]"
        if group.count < 0:
            raise where.error(f"{field}.count", f"must be 0 or more, not {group.count}")
        try:
            kind_name = pb.ModelInstanceGroup.Kind.Name(group.kind)
        except ValueError:
            kind_name = str(group.kind)
        if kind_name not in ("KIND_AUTO", "KIND_CPU", "KIND_GPU"):
            raise where.error(f"{field}.kind", f"{kind_name} is not supported; use KIND_AUTO, KIND_CPU or KIND_GPU")
        kind = InstanceKind(kind_name)
        if any(gpu < 0 for gpu in group.gpus):
            raise where.error(f"{field}.gpus", f"are {list(group.gpus)}; GPU ids are 0 or more")
        if group.gpus and kind is InstanceKind.CPU:
            raise where.error(f"{field}.gpus", "are given for a KIND_CPU group; remove them or use KIND_GPU")
        count += max(group.count, 1) * max(len(group.gpus), 1)
        kinds.add(kind)
        gpus.update(group.gpus)
    if len(kinds) > 1:
        names = ", ".join(sorted(k.value for k in kinds))
        raise where.error("instance_group", f"mixes kinds {names}; fleetserve runs one kind of instance per model")
    return Instances(count, kinds.pop(), tuple(sorted(gpus)))


def accelerators(msg: pb.ModelConfig, where: Where) -> tuple[str, ...]:
    """optimization.execution_accelerators as lowercase names, GPU ones first, in the order written.

    Only the names in GPU_ACCELERATORS and CPU_ACCELERATORS are accepted, and
    no accelerator parameters (fleetserve cannot pass them on).
    """
    chosen = msg.optimization.execution_accelerators
    names: list[str] = []
    groups = (("gpu_execution_accelerator", GPU_ACCELERATORS), ("cpu_execution_accelerator", CPU_ACCELERATORS))
    for group, known in groups:
        for index, accelerator in enumerate(getattr(chosen, group)):
            field = f"optimization.execution_accelerators.{group}[{index}]"
            name = accelerator.name.lower()
            if name not in known:
                raise where.error(f"{field}.name", f'"{accelerator.name}" is not known; use one of: {", ".join(known)}')
            if accelerator.parameters:
                raise where.error(f"{field}.parameters", "are not supported by fleetserve; remove them")
            if name not in names:
                names.append(name)
    return tuple(names)

"""The serving options of a model config: versions, dynamic batching, instances, accelerators.

Each function reads one section of the parsed config.pbtxt message and returns
the typed value ``ModelConfig`` holds, or raises ``ConfigError`` naming the
file (``source``) and the field and saying what is accepted. Pure functions;
used by model_store/complete.py, and ``version_policy`` also by
model_store/repository.py (the registry selects versions before it loads any).

Imports model_store.config, the generated config messages, ops.errors and, from kernels, the
checks of what the kernel can apply: ``GRAPH_LEVELS`` (the optimization.graph.level values it maps to
onnxruntime's), the instance bound of kernels.placement and kernels.providers' accelerator options, so that a config is refused at load for
exactly what the kernel cannot apply; must not import server, batching or grpc, nor anything else of kernels.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

from kernels.ort import GRAPH_LEVELS
from kernels.placement import MAX_INSTANCES
from kernels.providers import OptionError, accelerator_options, cuda_model_parameters
from model_store.config import (
    DEFAULT_PRIORITY_AGING_MS,
    DEFAULT_RESPONSE_CACHE_TTL_S,
    DEFAULT_SLO_PERCENTILE,
    OWN_PARAMETERS,
    PARAMETERS,
    DynamicBatching,
    InstanceGroup,
    InstanceKind,
    LatencySlo,
    ModelQueuePolicy,
    TimeoutAction,
    VersionPolicy,
)
from model_store.protos import model_config_pb2 as pb
from ops.errors import ConfigError

GPU_ACCELERATORS = ("tensorrt", "cuda")  # gpu_execution_accelerator names, matched case-insensitively
CPU_ACCELERATORS = ("cpu",)  # cpu_execution_accelerator names
MAX_PRIORITY_LEVELS = 64  # each level is a queue the scheduler looks at per batch


@dataclass(frozen=True)
class Where:
    """Which model and file a message is about; makes the ``ConfigError``."""

    model: str
    source: str

    def error(self, field: str, text: str) -> ConfigError:
        return ConfigError(f"{self.source}: {field}: {text}", model=self.model, source=self.source, field=field)


@dataclass(frozen=True)
class Instances:
    """The instance_group section: its groups (each count per listed GPU, or per visible GPU) and their one kind."""

    groups: tuple[InstanceGroup, ...] = (InstanceGroup(),)
    kind: InstanceKind = InstanceKind.AUTO


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
    Preferred sizes come back sorted and unique. The model parameters
    ``latency_slo_ms``, ``latency_slo_percentile`` and ``priority_aging_ms``
    are read here too; a latency objective needs dynamic batching and replaces
    the fixed delay and preferred sizes, so writing those as well is an error.
    """
    slo = latency_slo(msg, where)
    aging_ms = _number_parameter(msg, "priority_aging_ms", where, 'milliseconds >= 0, e.g. "1000" (0: strict priority)',
                                 default=DEFAULT_PRIORITY_AGING_MS, positive=False) or 0.0
    if not msg.HasField("dynamic_batching"):
        if completed:
            if slo is not None:  # the objective decides how long requests wait, as when written out
                return DynamicBatching(max_queue_delay_us=0, priority_aging_ms=aging_ms, latency_slo=slo)
            return DynamicBatching(priority_aging_ms=aging_ms, latency_slo=slo)
        if slo is not None:
            if max_batch_size == 0:
                fix = "needs a batching model (max_batch_size > 0) with dynamic batching; remove the parameter"
            else:
                fix = "needs dynamic batching; add `dynamic_batching { }` to the config or remove the parameter"
            raise where.error("parameters.latency_slo_ms", fix)
        return None
    db = msg.dynamic_batching
    if max_batch_size == 0:
        raise where.error("dynamic_batching", "needs a batching model (max_batch_size > 0), but max_batch_size is 0")
    levels, default_level = db.priority_levels, db.default_priority_level
    if levels > MAX_PRIORITY_LEVELS:
        raise where.error("dynamic_batching.priority_levels", f"is {levels}; use at most {MAX_PRIORITY_LEVELS} levels")
    if levels == 0:
        if default_level:
            raise where.error(
                "dynamic_batching.default_priority_level",
                f"is {default_level}, but priority_levels is 0; set priority_levels or remove it",
            )
        if db.priority_queue_policy:
            raise where.error(
                "dynamic_batching.priority_queue_policy", "is set, but priority_levels is 0; set priority_levels or remove it"
            )
    elif not 1 <= default_level <= levels:
        raise where.error(
            "dynamic_batching.default_priority_level",
            f"is {default_level}; with priority_levels {levels} it must be a level in 1..{levels} (1 is the highest)",
        )
    outside = sorted(level for level in db.priority_queue_policy if not 1 <= level <= levels)
    if levels and outside:
        raise where.error(
            "dynamic_batching.priority_queue_policy", f"has levels {outside}, outside 1..{levels} (priority_levels)"
        )
    sizes = tuple(sorted(set(db.preferred_batch_size)))
    for size in sizes:
        if not 0 < size <= max_batch_size:
            raise where.error(
                "dynamic_batching.preferred_batch_size", f"{size} is outside 1..max_batch_size ({max_batch_size})"
            )
    if slo is not None:
        if db.max_queue_delay_microseconds:
            raise where.error(
                "dynamic_batching.max_queue_delay_microseconds",
                f"is {db.max_queue_delay_microseconds}, but parameters.latency_slo_ms is set and decides how long "
                "requests wait; remove one of them",
            )
        if sizes:
            raise where.error(
                "dynamic_batching.preferred_batch_size",
                "is set, but parameters.latency_slo_ms is set and chooses batch sizes; remove one of them",
            )
    return DynamicBatching(
        max_queue_delay_us=db.max_queue_delay_microseconds,
        preferred_batch_size=sizes,
        preserve_ordering=db.preserve_ordering,
        priority_levels=levels,
        default_priority_level=default_level,
        default_queue_policy=_queue_policy(db.default_queue_policy, "dynamic_batching.default_queue_policy", where),
        priority_queue_policy={
            level: _queue_policy(p, f"dynamic_batching.priority_queue_policy[{level}]", where)
            for level, p in sorted(db.priority_queue_policy.items())
        },
        priority_aging_ms=aging_ms,
        latency_slo=slo,
    )


def latency_slo(msg: pb.ModelConfig, where: Where) -> LatencySlo | None:
    """The model parameters ``latency_slo_ms`` (> 0) and ``latency_slo_percentile`` (in (0, 100), default 99)."""
    latency = _number_parameter(msg, "latency_slo_ms", where, 'milliseconds > 0, e.g. "25"', default=None, positive=True)
    percentile = _number_parameter(
        msg, "latency_slo_percentile", where, 'a percentile in (0, 100), e.g. "99"', default=None, positive=True
    )
    if latency is None:
        if percentile is not None:
            raise where.error("parameters.latency_slo_percentile", "is set without latency_slo_ms; set both or neither")
        return None
    if percentile is None:
        percentile = DEFAULT_SLO_PERCENTILE
    elif percentile >= 100:
        raise where.error("parameters.latency_slo_percentile", f'is "{percentile:g}"; give a percentile in (0, 100), e.g. "99"')
    return LatencySlo(latency, percentile)


def response_cache_ttl_s(msg: pb.ModelConfig, where: Where) -> float:
    """The model parameter ``response_cache_ttl_s`` (> 0; default 60): how long cached responses live."""
    value = _number_parameter(msg, "response_cache_ttl_s", where, 'seconds > 0, e.g. "60"',
                              default=DEFAULT_RESPONSE_CACHE_TTL_S, positive=True)
    return DEFAULT_RESPONSE_CACHE_TTL_S if value is None else value


def _number_parameter(
    msg: pb.ModelConfig, key: str, where: Where, expected: str, *, default: float | None, positive: bool
) -> float | None:
    if key not in msg.parameters:
        return default
    text = msg.parameters[key].string_value
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise where.error(f"parameters.{key}", f'is "{text}"; give {expected}')
    return value


def _queue_policy(policy: pb.ModelQueuePolicy, field: str, where: Where) -> ModelQueuePolicy:
    try:
        action = TimeoutAction(pb.ModelQueuePolicy.TimeoutAction.Name(policy.timeout_action))
    except ValueError:  # a number the enum does not name (proto3 parses any)
        raise where.error(
            f"{field}.timeout_action", f"{policy.timeout_action} is not a known action; use REJECT or DELAY"
        ) from None
    return ModelQueuePolicy(
        max_queue_size=policy.max_queue_size,
        default_timeout_us=policy.default_timeout_microseconds,
        timeout_action=action,
        allow_timeout_override=policy.allow_timeout_override,
    )


def parameters(msg: pb.ModelConfig, where: Where) -> dict[str, str]:
    """The model parameters, by key. A key fleetserve does not read (config.PARAMETERS) is kept (the ModelConfig
    RPC reports it) and has no effect, as in Triton, where each backend reads its own keys; the server logs it at
    load. One that misspells a key of fleetserve's own (config.OWN_PARAMETERS) is an error: it would be ignored."""
    for key in msg.parameters:
        if key in PARAMETERS:
            continue
        close = difflib.get_close_matches(key.lower(), OWN_PARAMETERS, n=1, cutoff=0.8)
        if close:
            raise where.error(
                f"parameters.{key}",
                f'is not a parameter fleetserve reads (did you mean "{close[0]}"?); it reads: {", ".join(PARAMETERS)}',
            )
    return {key: msg.parameters[key].string_value for key in sorted(msg.parameters)}


def instances(msg: pb.ModelConfig, where: Where) -> Instances:
    """instance_group checked; a group's ``count`` (0 means 1) is per listed GPU, as in Triton (one that lists none:
    per visible GPU where a GPU provider runs the model, which the kernel decides at load)."""
    if not msg.instance_group:
        return Instances((InstanceGroup(name=f"{where.model}_0"),))
    groups: list[InstanceGroup] = []
    kinds: set[InstanceKind] = set()
    for index, group in enumerate(msg.instance_group):
        field = f"instance_group[{index}]"
        if group.count < 0:
            raise where.error(f"{field}.count", f"must be 0 or more, not {group.count}")
        if group.count > MAX_INSTANCES:
            raise where.error(f"{field}.count", f"is {group.count}; each instance is a thread running batches, so "
                              f"give at most {MAX_INSTANCES} (a few per core, or per GPU, is what serves fastest)")
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
        groups.append(InstanceGroup(max(group.count, 1), tuple(group.gpus), group.name or f"{where.model}_{index}"))
        kinds.add(kind)
    listed = sum(group.count * max(1, len(group.gpus)) for group in groups)
    if listed > MAX_INSTANCES:
        raise where.error("instance_group", f"makes {listed} instances; give at most {MAX_INSTANCES} in all")
    if len(kinds) > 1:
        names = ", ".join(sorted(k.value for k in kinds))
        raise where.error("instance_group", f"mixes kinds {names}; fleetserve runs one kind of instance per model")
    return Instances(tuple(groups), kinds.pop())


def accelerators(msg: pb.ModelConfig, where: Where) -> tuple[tuple[str, ...], dict[str, dict[str, str]]]:
    """optimization.execution_accelerators as lowercase names, GPU ones first, in the order written, and the
    parameters of those that have some, by name.

    Only the names in GPU_ACCELERATORS and CPU_ACCELERATORS are accepted. Parameters have the meaning Triton's
    onnxruntime backend gives them, each checked here (kernels.providers.accelerator_options), so a config that
    could not start on a GPU is refused on every machine. Triton's deprecated CUDA model parameters
    (``cudnn_conv_algo_search``, ...) are checked too.
    """
    chosen = msg.optimization.execution_accelerators
    names: list[str] = []
    given: dict[str, dict[str, str]] = {}
    groups = (("gpu_execution_accelerator", GPU_ACCELERATORS), ("cpu_execution_accelerator", CPU_ACCELERATORS))
    for group, known in groups:
        for index, accelerator in enumerate(getattr(chosen, group)):
            field = f"optimization.execution_accelerators.{group}[{index}]"
            name = accelerator.name.lower()
            if name not in known:
                raise where.error(f"{field}.name", f'"{accelerator.name}" is not known; use one of: {", ".join(known)}')
            parameters = dict(sorted(accelerator.parameters.items()))
            if name in names:
                if parameters or name in given:
                    raise where.error(f"{field}.name", f'"{name}" is listed twice; list it once, with its parameters')
                continue
            try:
                accelerator_options(name, parameters)
            except OptionError as exc:
                raise where.error(f"{field}.parameters.{exc.key}", str(exc)) from None
            names.append(name)
            if parameters:
                given[name] = parameters
    try:
        cuda_model_parameters({key: value.string_value for key, value in msg.parameters.items()})
    except OptionError as exc:
        raise where.error(f"parameters.{exc.key}", f"{exc} (Triton's CUDA option for onnxruntime)") from None
    return tuple(names), given


def graph_level(msg: pb.ModelConfig, where: Where) -> int | None:
    """optimization.graph.level with Triton's meaning (kernels.ort.GRAPH_LEVELS); None when the config has no
    graph section."""
    if not msg.optimization.HasField("graph"):
        return None
    level = msg.optimization.graph.level
    if level not in GRAPH_LEVELS:
        raise where.error(
            "optimization.graph.level",
            f"is {level}; use -1 (basic), 1 (basic and extended), 2 (none) or 0 (all, the default)",
        )
    return level

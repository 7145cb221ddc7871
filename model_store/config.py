"""Typed, validated model configuration: what the rest of fleetserve reads.

``ModelConfig`` is built from a config.pbtxt (Triton's field names, parsed by
model_store/pbtxt.py) completed with the ONNX file's signature
(model_store/complete.py). It is immutable; the serving path reads it without
locks. ``to_proto()`` gives the ``inference.ModelConfig`` message the
ModelConfig RPC returns.

Dims follow Triton: for a model with ``max_batch_size > 0`` the batch dimension
is implicit and not part of ``dims``; ``-1`` marks a variable dimension.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from model_store.datatypes import BY_NAME, Datatype
from model_store.protos import model_config_pb2 as pb
from model_store.sequence_types import SequenceBatching

DEFAULT_MAX_BATCH_SIZE = 64  # used when an ONNX model has a dynamic first dimension and no config says otherwise
DEFAULT_MAX_QUEUE_DELAY_US = 500
DEFAULT_PRIORITY_AGING_MS = 1000.0  # a queued request waiting this long goes before younger ones of any level
DEFAULT_SLO_PERCENTILE = 99.0
DEFAULT_MODEL_FILENAME = "model.onnx"
DEFAULT_RESPONSE_CACHE_TTL_S = 60.0  # how long a cached response lives (fleet mode, response_cache enabled)
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
ENSEMBLE_PLATFORM = "ensemble"  # Triton's: a pipeline of other models (model_store/ensemble.py)
# The model parameters fleetserve reads: fleetserve's own, and intra_op_thread_count, which Triton's onnxruntime
# backend reads too. Other keys (another backend's, e.g. onnxruntime's "execution_mode") have no effect.
OWN_PARAMETERS = ("latency_slo_ms", "latency_slo_percentile", "priority_aging_ms", "response_cache_ttl_s",
                  "inline_run_max_us")
# Triton's deprecated model parameters for the CUDA provider (kernels.providers.CUDA_MODEL_PARAMETERS): read too.
CUDA_PARAMETERS = ("cudnn_conv_algo_search", "gpu_mem_limit", "arena_extend_strategy", "do_copy_in_default_stream")
PARAMETERS = ("intra_op_thread_count", *OWN_PARAMETERS, *CUDA_PARAMETERS)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of a model."""

    name: str
    datatype: Datatype
    dims: tuple[int, ...]  # without the batch dimension when the model batches
    optional: bool = False
    format: str = "FORMAT_NONE"  # an input's stated layout (Triton's ModelInput.Format): reported, not used
    label_filename: str = ""  # an output's class labels file, in the model folder (model_store/labels.py)
    # Triton's reshape: the shape the model takes or gives (without the batch dimension), when clients see ``dims``
    reshape: tuple[int, ...] | None = None

    def shape_with_batch(self, max_batch_size: int) -> tuple[int, ...]:
        """The full shape a client sees in metadata (-1 for the batch dimension)."""
        return ((-1,) + self.dims) if max_batch_size > 0 else self.dims

    @property
    def model_dims(self) -> tuple[int, ...]:
        """The dims the model runs with: ``reshape``'s, else ``dims``."""
        return self.dims if self.reshape is None else self.reshape

    def to_model(self, data: np.ndarray) -> np.ndarray:
        """An input as a client sent it (its leading batch dimension, if any, then ``dims``) as the model takes it:
        the same elements in the reshape's dims (a view, no copy). The identity without a reshape."""
        if self.reshape is None:
            return data
        return data.reshape(data.shape[:data.ndim - len(self.dims)] + self.reshape)

    def to_client(self, data: np.ndarray) -> np.ndarray:
        """An output as the model gave it, in the ``dims`` clients see: the inverse of ``to_model``."""
        if self.reshape is None:
            return data
        return data.reshape(data.shape[:data.ndim - len(self.reshape)] + self.dims)


class InstanceKind(enum.Enum):
    AUTO = "KIND_AUTO"
    CPU = "KIND_CPU"
    GPU = "KIND_GPU"


@dataclass(frozen=True)
class InstanceGroup:
    """One instance_group entry, as Triton reads it: ``count`` instances on each GPU ``gpus`` lists; one that
    lists none has ``count`` on each visible GPU with a GPU provider, ``count`` in all on the CPU
    (kernels/placement.py places them: the visible GPUs are the kernel's to count)."""

    count: int = 1  # at least 1 (a config's 0 means 1)
    gpus: tuple[int, ...] = ()
    name: str = ""  # as written, else "<model>_<index>" as Triton names it (model_store/options.py)

    @property
    def instances(self) -> int:
        """Its instances where the CPU runs the model."""
        return self.count * max(1, len(self.gpus))


@dataclass(frozen=True)
class VersionPolicy:
    """Which version folders are served: latest N, all, or a specific list."""

    kind: str = "latest"  # "latest" | "all" | "specific"
    num_versions: int = 1  # for "latest"
    versions: tuple[int, ...] = ()  # for "specific"

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of those present, ascending."""
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.num_versions :] if self.num_versions > 0 else []

    def describe(self) -> str:
        """The policy as config.pbtxt writes it: ``latest { num_versions: 1 }``, ``all { }``, ``specific { ... }``."""
        if self.kind == "all":
            return "all { }"
        if self.kind == "specific":
            return f"specific {{ versions: [{', '.join(str(v) for v in self.versions)}] }}"
        return f"latest {{ num_versions: {self.num_versions} }}"


class TimeoutAction(enum.Enum):
    """What happens to a request whose queue timeout passes (Triton's ModelQueuePolicy.TimeoutAction)."""

    REJECT = "REJECT"
    DELAY = "DELAY"


@dataclass(frozen=True)
class ModelQueuePolicy:
    """The queue policy of one priority level (Triton's ModelQueuePolicy)."""

    max_queue_size: int = 0  # 0: unbounded in Triton; fleetserve applies its own default bound
    default_timeout_us: int = 0  # queue timeout; 0: none
    timeout_action: TimeoutAction = TimeoutAction.REJECT
    allow_timeout_override: bool = False  # a request's `timeout` parameter may shorten the timeout


@dataclass(frozen=True)
class LatencySlo:
    """A latency objective (model parameters ``latency_slo_ms`` and ``latency_slo_percentile``)."""

    latency_ms: float
    percentile: float = DEFAULT_SLO_PERCENTILE


@dataclass(frozen=True)
class DynamicBatching:
    """The scheduler's knobs (Triton's dynamic_batching field names, plus fleetserve's parameters).

    Priority level 1 is the highest; with ``priority_levels`` 0 there is one
    level. ``latency_slo``, when set, replaces the fixed queue delay and
    preferred sizes by SLO-driven batching (batching/README.md).
    """

    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    preferred_batch_size: tuple[int, ...] = ()
    preserve_ordering: bool = False
    priority_levels: int = 0
    default_priority_level: int = 0  # 1..priority_levels when there are levels
    default_queue_policy: ModelQueuePolicy = field(default_factory=ModelQueuePolicy)
    priority_queue_policy: Mapping[int, ModelQueuePolicy] = field(default_factory=dict)  # overrides, by level
    priority_aging_ms: float = DEFAULT_PRIORITY_AGING_MS  # anti-starvation bound (parameter); 0: strict priority
    latency_slo: LatencySlo | None = None

    @property
    def max_queue_size(self) -> int:
        """The default level's bound (0: the server's default)."""
        return self.default_queue_policy.max_queue_size

    def queue_policy(self, level: int) -> ModelQueuePolicy:
        """The policy of priority ``level`` (1-based): its override, else the default policy."""
        return self.priority_queue_policy.get(level, self.default_queue_policy)


@dataclass(frozen=True)
class WarmupInput:
    """One input of a warm-up sample (Triton's ModelWarmup.Input): its data, without the batch dimension."""

    datatype: Datatype
    dims: tuple[int, ...]
    data: str  # "zero_data", "random_data" or "input_data_file"
    file: str = ""  # input_data_file's name, in the model folder's warmup/ folder


@dataclass(frozen=True)
class WarmupSample:
    """A request run at load before the version serves (Triton's model_warmup; model_store/warmup.py)."""

    name: str
    batch_size: int  # rows; each input's data repeated for each
    inputs: Mapping[str, WarmupInput]
    count: int = 1  # runs (Triton's 0 means once)


@dataclass(frozen=True)
class EnsembleStep:
    """One step of an ensemble (Triton's ModelEnsembling.Step): a model run on ensemble tensors."""

    model_name: str
    model_version: int  # -1: the latest version that serves
    input_map: tuple[tuple[str, str], ...]  # (the model's input, the ensemble tensor it reads), by input name
    output_map: tuple[tuple[str, str], ...]  # (the model's output, the ensemble tensor it writes), by output name

    @property
    def version_text(self) -> str:
        """The version as a request names it ("" for the latest)."""
        return "" if self.model_version < 0 else str(self.model_version)


@dataclass(frozen=True)
class Ensemble:
    """An ensemble's steps, as its config lists them (model_store/ensemble.py checked that they form no cycle)."""

    steps: tuple[EnsembleStep, ...]

    @property
    def models(self) -> tuple[str, ...]:
        """The composing models' names, each once, in step order."""
        return tuple(dict.fromkeys(step.model_name for step in self.steps))

    def run_order(self) -> tuple[EnsembleStep, ...]:
        """The steps in an order that runs each after the steps writing what it reads."""
        written = {tensor for step in self.steps for _, tensor in step.output_map}
        available: set[str] = set()
        order: list[EnsembleStep] = []
        waiting = list(self.steps)
        while waiting:
            ready = [s for s in waiting if all(t in available or t not in written for _, t in s.input_map)]
            for step in ready:
                order.append(step)
                available.update(t for _, t in step.output_map)
                waiting.remove(step)
        return tuple(order)


@dataclass(frozen=True)
class ModelConfig:
    """A complete model configuration; see the module docstring."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_batching: DynamicBatching | None = None
    instance_groups: tuple[InstanceGroup, ...] = (InstanceGroup(),)
    instance_kind: InstanceKind = InstanceKind.AUTO
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    # Execution providers in preference order, e.g. ("tensorrt", "cuda", "cpu"); empty: the default chain.
    execution_accelerators: tuple[str, ...] = ()
    # Each accelerator's parameters as written (Triton's keys; kernels.providers maps them), by short name.
    accelerator_parameters: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    graph_optimization_level: int | None = None
    default_model_filename: str = DEFAULT_MODEL_FILENAME
    parameters: Mapping[str, str] = field(default_factory=dict)
    model_warmup: tuple[WarmupSample, ...] = ()
    response_cache: bool = False
    response_cache_ttl_s: float = DEFAULT_RESPONSE_CACHE_TTL_S  # parameter response_cache_ttl_s
    ensemble: Ensemble | None = None  # an ensemble's steps (platform "ensemble"): no model file, no kernel
    sequence_batching: SequenceBatching | None = None

    @property
    def batching(self) -> DynamicBatching | None:
        """How requests batch: dynamic_batching's settings, or the sequence batcher's strategy's delay and preferred
        sizes, which batch the requests of different sequences (None: one at a time)."""
        sb = self.sequence_batching
        if sb is not None and self.max_batch_size > 0:
            return DynamicBatching(max_queue_delay_us=sb.max_queue_delay_us, preferred_batch_size=sb.preferred_batch_size)
        return self.dynamic_batching

    @property
    def platform(self) -> str:
        return PLATFORM if self.ensemble is None else ENSEMBLE_PLATFORM

    def placed(self, on_gpu: bool) -> "ModelConfig":
        """The config as its loaded kernel runs it: KIND_AUTO becomes the kind the kernel chose (KIND_GPU where a
        GPU provider runs the model, else KIND_CPU), as Triton's completed configs report it."""
        if self.instance_kind is not InstanceKind.AUTO or self.ensemble is not None:
            return self
        return replace(self, instance_kind=InstanceKind.GPU if on_gpu else InstanceKind.CPU)

    @property
    def instance_count(self) -> int:
        """Model instances in all where the CPU runs the model. With a GPU provider a group that lists no GPUs has
        ``count`` on each visible GPU, so the loaded kernel's ``instances`` is the count that serves."""
        return sum(group.instances for group in self.instance_groups)

    @property
    def gpus(self) -> tuple[int, ...]:
        """The GPUs the instance groups list, ascending."""
        return tuple(sorted({gpu for group in self.instance_groups for gpu in group.gpus}))

    @property
    def unread_parameters(self) -> tuple[str, ...]:
        """The parameter keys fleetserve does not read (no effect; see PARAMETERS), sorted."""
        return tuple(sorted(key for key in self.parameters if key not in PARAMETERS))

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def to_proto(self) -> pb.ModelConfig:
        """The ``inference.ModelConfig`` message returned by the ModelConfig RPC."""
        msg = pb.ModelConfig(name=self.name, platform=self.platform, max_batch_size=self.max_batch_size)
        if self.ensemble is None:
            msg.backend = BACKEND
            msg.default_model_filename = self.default_model_filename
        for spec in self.inputs:
            added = msg.input.add(
                name=spec.name,
                data_type=pb.DataType.Value(spec.datatype.config_name),
                dims=spec.dims,
                optional=spec.optional,
                format=pb.ModelInput.Format.Value(spec.format),
            )
            if spec.reshape is not None:
                added.reshape.shape.extend(spec.reshape)
        for spec in self.outputs:
            out = msg.output.add(name=spec.name, data_type=pb.DataType.Value(spec.datatype.config_name), dims=spec.dims,
                                 label_filename=spec.label_filename)
            if spec.reshape is not None:
                out.reshape.shape.extend(spec.reshape)
        policy = self.version_policy
        if policy.kind == "all":
            msg.version_policy.all.SetInParent()
        elif policy.kind == "specific":
            msg.version_policy.specific.versions.extend(policy.versions)
        else:
            msg.version_policy.latest.num_versions = policy.num_versions
        if self.dynamic_batching is not None:
            db = self.dynamic_batching
            msg.dynamic_batching.max_queue_delay_microseconds = db.max_queue_delay_us
            msg.dynamic_batching.preferred_batch_size.extend(db.preferred_batch_size)
            msg.dynamic_batching.preserve_ordering = db.preserve_ordering
            msg.dynamic_batching.priority_levels = db.priority_levels
            msg.dynamic_batching.default_priority_level = db.default_priority_level
            _queue_policy_proto(db.default_queue_policy, msg.dynamic_batching.default_queue_policy)
            for level, level_policy in sorted(db.priority_queue_policy.items()):
                _queue_policy_proto(level_policy, msg.dynamic_batching.priority_queue_policy[level])
        if self.sequence_batching is not None:
            self.sequence_batching.fill_proto(msg.sequence_batching)
        if self.ensemble is not None:
            for step in self.ensemble.steps:
                msg.ensemble_scheduling.step.add(model_name=step.model_name, model_version=step.model_version,
                                                 input_map=dict(step.input_map), output_map=dict(step.output_map))
        kind = pb.ModelInstanceGroup.Kind.Value(self.instance_kind.value)
        for group in self.instance_groups if self.ensemble is None else ():
            msg.instance_group.add(name=group.name, count=group.count, kind=kind, gpus=group.gpus)
        for name in self.execution_accelerators:
            target = (
                msg.optimization.execution_accelerators.cpu_execution_accelerator
                if name == "cpu"
                else msg.optimization.execution_accelerators.gpu_execution_accelerator
            )
            target.add(name=name, parameters=self.accelerator_parameters.get(name, {}))
        if self.graph_optimization_level is not None:
            msg.optimization.graph.level = self.graph_optimization_level
        for key, value in self.parameters.items():
            msg.parameters[key].string_value = value
        for sample in self.model_warmup:
            written = msg.model_warmup.add(name=sample.name, batch_size=sample.batch_size, count=sample.count)
            for name, given in sample.inputs.items():
                tensor = written.inputs[name]
                tensor.data_type = pb.DataType.Value(given.datatype.config_name)
                tensor.dims.extend(given.dims)
                if given.data == "input_data_file":
                    tensor.input_data_file = given.file
                else:
                    setattr(tensor, given.data, True)
        msg.response_cache.enable = self.response_cache
        return msg


def _queue_policy_proto(policy: ModelQueuePolicy, msg: pb.ModelQueuePolicy) -> None:
    msg.max_queue_size = policy.max_queue_size
    msg.default_timeout_microseconds = policy.default_timeout_us
    msg.timeout_action = pb.ModelQueuePolicy.TimeoutAction.Value(policy.timeout_action.value)
    msg.allow_timeout_override = policy.allow_timeout_override


def datatype(name: str) -> Datatype:
    """Look up a protocol datatype name ("FP32")."""
    return BY_NAME[name]

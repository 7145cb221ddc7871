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
from dataclasses import dataclass, field
from typing import Mapping

from model_store.datatypes import BY_NAME, Datatype
from model_store.protos import model_config_pb2 as pb

DEFAULT_MAX_BATCH_SIZE = 64  # used when an ONNX model has a dynamic first dimension and no config says otherwise
DEFAULT_MAX_QUEUE_DELAY_US = 500
DEFAULT_MODEL_FILENAME = "model.onnx"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of a model."""

    name: str
    datatype: Datatype
    dims: tuple[int, ...]  # without the batch dimension when the model batches
    optional: bool = False

    def shape_with_batch(self, max_batch_size: int) -> tuple[int, ...]:
        """The full shape a client sees in metadata (-1 for the batch dimension)."""
        return ((-1,) + self.dims) if max_batch_size > 0 else self.dims


class InstanceKind(enum.Enum):
    AUTO = "KIND_AUTO"
    CPU = "KIND_CPU"
    GPU = "KIND_GPU"


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


@dataclass(frozen=True)
class DynamicBatching:
    """The scheduler's knobs (Triton's dynamic_batching field names)."""

    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    preferred_batch_size: tuple[int, ...] = ()
    preserve_ordering: bool = False
    max_queue_size: int = 0  # 0: unbounded in Triton; fleetserve applies its own default bound


@dataclass(frozen=True)
class ModelConfig:
    """A complete model configuration; see the module docstring."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_batching: DynamicBatching | None = None
    instance_count: int = 1
    instance_kind: InstanceKind = InstanceKind.AUTO
    gpus: tuple[int, ...] = ()
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    # Execution providers in preference order, e.g. ("tensorrt", "cuda", "cpu"); empty: the default chain.
    execution_accelerators: tuple[str, ...] = ()
    graph_optimization_level: int | None = None
    default_model_filename: str = DEFAULT_MODEL_FILENAME
    parameters: Mapping[str, str] = field(default_factory=dict)
    response_cache: bool = False

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def to_proto(self) -> pb.ModelConfig:
        """The ``inference.ModelConfig`` message returned by the ModelConfig RPC."""
        msg = pb.ModelConfig(
            name=self.name,
            platform=PLATFORM,
            backend=BACKEND,
            max_batch_size=self.max_batch_size,
            default_model_filename=self.default_model_filename,
        )
        for spec in self.inputs:
            msg.input.add(
                name=spec.name,
                data_type=pb.DataType.Value(spec.datatype.config_name),
                dims=spec.dims,
                optional=spec.optional,
            )
        for spec in self.outputs:
            msg.output.add(name=spec.name, data_type=pb.DataType.Value(spec.datatype.config_name), dims=spec.dims)
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
            msg.dynamic_batching.default_queue_policy.max_queue_size = db.max_queue_size
        msg.instance_group.add(
            count=self.instance_count,
            kind=pb.ModelInstanceGroup.Kind.Value(self.instance_kind.value),
            gpus=self.gpus,
        )
        for name in self.execution_accelerators:
            target = (
                msg.optimization.execution_accelerators.cpu_execution_accelerator
                if name == "cpu"
                else msg.optimization.execution_accelerators.gpu_execution_accelerator
            )
            target.add(name=name)
        if self.graph_optimization_level is not None:
            msg.optimization.graph.level = self.graph_optimization_level
        for key, value in self.parameters.items():
            msg.parameters[key].string_value = value
        msg.response_cache.enable = self.response_cache
        return msg


def datatype(name: str) -> Datatype:
    """Look up a protocol datatype name ("FP32")."""
    return BY_NAME[name]

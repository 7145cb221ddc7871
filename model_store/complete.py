"""Complete a model configuration from the ONNX model's signature, and check it.

``build_config`` is a pure function: the parsed config.pbtxt (or none), the
signature the kernel reports for the model file, and the file name for
messages go in; a validated ``ModelConfig`` comes out, or a ``ConfigError``
naming the file and the field and saying what was expected. Completion follows
Triton's auto-complete for ONNX models:

- inputs or outputs not listed come from the model, and so do a listed
  tensor's data_type and dims when left out; where config and model both give
  a dim, a fixed size wins over -1. Listed outputs may be a subset; listed
  inputs must be all of them.
- a model whose every input and output has a variable first dimension batches
  (``DEFAULT_MAX_BATCH_SIZE``, dynamic batching on with fleetserve's defaults)
  unless the config states ``max_batch_size`` or lists dims that include the
  batch dimension.

The serving options (versions, batching, instances, accelerators) are read
by model_store/options.py, sequence_batching by model_store/sequence.py. Imports model_store.config,
.datatypes, .defaults_only, .options, .sequence, .warmup,
the generated config messages, numpy and ops.errors only; must not import server, batching,
kernels, onnxruntime or grpc.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from model_store import defaults_only, options, sequence, warmup
from model_store.config import (
    BACKEND,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MODEL_FILENAME,
    PLATFORM,
    ModelConfig,
    TensorSpec,
)
from model_store.datatypes import BY_CONFIG_NAME, Datatype, from_numpy
from model_store.options import Where
from model_store.protos import model_config_pb2 as pb
from ops.errors import ConfigError


class SignatureTensor(Protocol):
    """One input or output as the runtime reports it for the model file."""

    @property
    def name(self) -> str: ...

    @property
    def dtype(self) -> np.dtype:  # object dtype for ONNX string tensors
        ...

    @property
    def shape(self) -> tuple[int | None, ...]:  # None (or a symbolic name) for a variable dim
        ...


@dataclass(frozen=True)
class ModelTensor:
    """A plain ``SignatureTensor``, for callers and tests that build a signature."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class _Tensor:
    """A signature tensor normalised: protocol datatype, -1 for variable dims."""

    name: str
    kind: str  # "input" | "output"
    datatype: Datatype
    dtype: np.dtype
    shape: tuple[int, ...]

    def dims(self, max_batch_size: int) -> tuple[int, ...]:
        return self.shape[1:] if max_batch_size > 0 else self.shape

    def describe(self) -> str:
        return f"{self.name} ({self.datatype.config_name} {list(self.shape)})"


def build_config(
    model_name: str,
    message: pb.ModelConfig | None,
    inputs: Sequence[SignatureTensor],
    outputs: Sequence[SignatureTensor],
    source: str,
    *,
    stated: Collection[str] = (),
) -> ModelConfig:
    """The complete, checked configuration of model ``model_name``.

    ``message`` is the parsed config.pbtxt or None; ``stated`` holds the
    top-level field names the file writes (``pbtxt.stated_fields``), so that an
    explicit ``max_batch_size: 0`` turns batching off; without it a zero
    ``max_batch_size`` counts as absent. Raises ``ConfigError`` naming
    ``source`` and the field. Pure: reads no files.
    """
    msg = message if message is not None else pb.ModelConfig()
    where = Where(model_name, source)
    _check_identity(msg, model_name, where)
    defaults_only.check(msg, where)
    model_in = tuple(_normalise(t, "input", where) for t in inputs)
    model_out = tuple(_normalise(t, "output", where) for t in outputs)
    max_batch_size, completed = _max_batch_size(msg, model_in, model_out, "max_batch_size" in stated, where)
    instances = options.instances(msg, where)
    accelerators, accelerator_parameters = options.accelerators(msg, where)
    sequences = sequence.read(msg, {t.name: (t.datatype, t.dims(max_batch_size)) for t in model_in},
                              {t.name: (t.datatype, t.dims(max_batch_size)) for t in model_out}, max_batch_size, where)
    if sequences is not None:  # the inputs and outputs the server fills and keeps are not the requests'
        model_in = tuple(t for t in model_in if t.name not in sequences.server_inputs)
        model_out = tuple(t for t in model_out if t.name not in sequences.state_outputs)
    specs = _tensors(msg.input, model_in, max_batch_size, where, every=True)
    return ModelConfig(
        name=model_name,
        max_batch_size=max_batch_size,
        inputs=specs,
        outputs=_tensors(msg.output, model_out, max_batch_size, where, every=False),
        dynamic_batching=options.dynamic_batching(msg, max_batch_size, completed and sequences is None, where),
        sequence_batching=sequences,
        instance_groups=instances.groups,
        instance_kind=instances.kind,
        version_policy=options.version_policy(msg, where),
        execution_accelerators=accelerators,
        accelerator_parameters=accelerator_parameters,
        graph_optimization_level=options.graph_level(msg, where),
        default_model_filename=model_filename(msg, source),
        parameters=options.parameters(msg, where),
        model_warmup=warmup.samples(msg, specs, max_batch_size, where),
        response_cache=msg.response_cache.enable,
        response_cache_ttl_s=options.response_cache_ttl_s(msg, where),
    )


def model_filename(message: pb.ModelConfig | None, source: str) -> str:
    """The model file's name inside each version folder; a bare file name only."""
    name = message.default_model_filename if message is not None else ""
    if not name:
        return DEFAULT_MODEL_FILENAME
    if name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ConfigError(
            f'{source}: default_model_filename: "{name}" must be a file name inside the version folder, '
            "without path separators",
            source=source,
            field="default_model_filename",
        )
    return name


def _check_identity(msg: pb.ModelConfig, model_name: str, where: Where) -> None:
    if msg.name and msg.name != model_name:
        raise where.error(
            "name", f'is "{msg.name}", but the model folder is "{model_name}"; make them equal or leave name out'
        )
    served = f'fleetserve serves only ONNX models (platform "{PLATFORM}", backend "{BACKEND}")'
    if msg.platform and msg.platform != PLATFORM:
        raise where.error("platform", f'is "{msg.platform}"; {served}')
    if msg.backend and msg.backend != BACKEND:
        raise where.error("backend", f'is "{msg.backend}"; {served}')
    if msg.model_transaction_policy.decoupled:
        raise where.error(
            "model_transaction_policy.decoupled",
            "is true, which fleetserve does not support: each request gets exactly one response; remove it or "
            "set it false (Triton's default)",
        )


def _normalise(tensor: SignatureTensor, kind: str, where: Where) -> _Tensor:
    dtype = np.dtype(tensor.dtype)
    try:
        datatype = from_numpy(dtype)
    except ValueError:
        raise where.error(f'model {kind} "{tensor.name}"', f"has type {dtype}, which fleetserve cannot serve") from None
    shape = tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else -1 for d in tensor.shape)
    return _Tensor(tensor.name, kind, datatype, dtype, shape)


def _max_batch_size(
    msg: pb.ModelConfig, model_in: tuple[_Tensor, ...], model_out: tuple[_Tensor, ...], stated: bool, where: Where
) -> tuple[int, bool]:
    """(max_batch_size, whether completion chose it)."""
    size = msg.max_batch_size
    if size < 0:
        raise where.error("max_batch_size", f"must be 0 (no batching) or a positive batch size, not {size}")
    fixed = [t for t in model_in + model_out if not t.shape or t.shape[0] != -1]
    if size > 0:
        if fixed:
            raise where.error(
                "max_batch_size",
                f"is {size}, which needs a variable first (batch) dimension in every input and output, "
                f"but the model's {fixed[0].kind} {fixed[0].describe()} has none; set max_batch_size: 0",
            )
        return size, False
    if stated or fixed or not model_in:
        return 0, False
    # Not stated: the model batches unless listed dims include the batch dimension (Triton does the same).
    shapes = {t.name: len(t.shape) for t in model_in + model_out}
    # A reshaped tensor's dims are the clients' view: its reshape is what has the model's rank.
    listed = {e.name: tuple(e.reshape.shape) if e.HasField("reshape") else tuple(e.dims)
              for e in (*msg.input, *msg.output) if (e.dims or e.HasField("reshape")) and e.name in shapes}
    if any(len(dims) == shapes[name] for name, dims in listed.items()):
        return 0, False
    return DEFAULT_MAX_BATCH_SIZE, True


def _tensors(
    listed: Sequence[pb.ModelInput | pb.ModelOutput],
    model: tuple[_Tensor, ...],
    max_batch_size: int,
    where: Where,
    *,
    every: bool,
) -> tuple[TensorSpec, ...]:
    """The served tensors: the model's when none are listed, else the listed ones checked."""
    if not listed:
        return tuple(TensorSpec(t.name, t.datatype, t.dims(max_batch_size)) for t in model)
    kind = "input" if every else "output"
    by_name = {t.name: t for t in model}
    specs: list[TensorSpec] = []
    for index, entry in enumerate(listed):
        field = listed_field(entry, index, kind, specs, where)
        tensor = by_name.get(entry.name)
        if tensor is None:
            known = ", ".join(t.describe() for t in model) or "none"
            raise where.error(field, f"the model has no {kind} of that name; its {kind}s are: {known}")
        reshape = None
        if entry.HasField("reshape"):
            reshape = _reshape(tuple(entry.reshape.shape), tensor, max_batch_size, field, where)
        if isinstance(entry, pb.ModelInput) and entry.optional:
            # The model's inputs are its session's, and onnxruntime runs only with every one of them given:
            # a request leaving this one out would fail inside onnxruntime instead of being refused up front.
            raise where.error(f"{field}.optional", "is true, but the ONNX model needs this input on every run; "
                                                   "remove optional (or the input from the model)")
        datatype = _datatype(entry.data_type, tensor, field, where)
        if reshape is None:
            dims = _dims(tuple(entry.dims), tensor, max_batch_size, field, where)
        else:
            dims = _client_dims(tuple(entry.dims), reshape, field, where)
        if isinstance(entry, pb.ModelInput):
            layout = _format(entry.format, dims, field, where)
            specs.append(TensorSpec(entry.name, datatype, dims, optional=entry.optional, format=layout, reshape=reshape))
        else:
            specs.append(TensorSpec(entry.name, datatype, dims, label_filename=entry.label_filename, reshape=reshape))
    if every:
        named = {spec.name for spec in specs}
        missing = [t.describe() for t in model if t.name not in named]
        if missing:
            listing = ", ".join(missing)
            raise where.error(kind, f"the model's {kind}s {listing} are not listed; list every {kind} or none")
    return tuple(specs)


def listed_field(entry: pb.ModelInput | pb.ModelOutput, index: int, kind: str, specs: Sequence[TensorSpec],
                 where: Where) -> str:
    """How messages name a listed ``kind`` ("input", "output") tensor; refuses one without a name or listed twice
    (``specs``: those before it)."""
    field = f'{kind} "{entry.name}"' if entry.name else f"{kind}[{index}]"
    if not entry.name:
        raise where.error(field, "has no name")
    if any(spec.name == entry.name for spec in specs):
        raise where.error(field, "is listed twice")
    return field


def _datatype(value: int, tensor: _Tensor, field: str, where: Where) -> Datatype:
    if value == 0:  # TYPE_INVALID: not stated, take the model's
        return tensor.datatype
    try:
        stated = BY_CONFIG_NAME[pb.DataType.Name(value)]
    except (ValueError, KeyError):
        raise where.error(f"{field}.data_type", f"{value} is not a known data type") from None
    # BF16 travels as uint16 words, so a bf16 tensor may be reported as uint16.
    if stated != tensor.datatype and stated.numpy != tensor.dtype:
        raise where.error(
            f"{field}.data_type",
            f"is {stated.config_name}, but the model's {tensor.kind} is {tensor.datatype.config_name}",
        )
    return stated


def _format(value: int, dims: tuple[int, ...], field: str, where: Where) -> str:
    """An input's format name; as Triton, an image layout (NHWC, NCHW) needs exactly 3 dims."""
    try:
        layout = pb.ModelInput.Format.Name(value)
    except ValueError:
        names = ", ".join(pb.ModelInput.Format.keys())
        raise where.error(f"{field}.format", f"{value} is not a known format; use one of {names}") from None
    if layout != "FORMAT_NONE" and len(dims) != 3:
        raise where.error(
            f"{field}.format",
            f"is {layout}, an image layout, which needs 3 dims (the batch dimension not counted), but dims are "
            f"{list(dims)}; use FORMAT_NONE",
        )
    return layout


def _dims(stated: tuple[int, ...], tensor: _Tensor, max_batch_size: int, field: str, where: Where) -> tuple[int, ...]:
    """The stated dims merged with the model's: a fixed size on either side wins over -1."""
    model = tensor.dims(max_batch_size)
    if not stated:
        return model
    note = (
        f"max_batch_size {max_batch_size}: dims leave out the batch dimension"
        if max_batch_size > 0
        else "max_batch_size 0: dims are the whole shape"
    )
    expected = f"the model's {tensor.kind} has shape {list(tensor.shape)}, so dims should be {list(model)} ({note})"
    if any(d < 1 and d != -1 for d in stated):  # as Triton: a 0 would make every request but an empty one wrong
        raise where.error(
            f"{field}.dims", f"are {list(stated)}; each dim is a size >= 1, or -1 for a variable size; {expected}"
        )
    if len(stated) != len(model):
        raise where.error(f"{field}.dims", f"are {list(stated)}, but {expected}")
    for mine, theirs in zip(stated, model):
        if mine != -1 and theirs != -1 and mine != theirs:
            raise where.error(f"{field}.dims", f"are {list(stated)}, but {expected}")
    return tuple(theirs if mine == -1 else mine for mine, theirs in zip(stated, model))


def _reshape(shape: tuple[int, ...], tensor: _Tensor, max_batch_size: int, field: str, where: Where) -> tuple[int, ...]:
    """Triton's ``reshape``: the shape the model takes (without the batch dimension), checked against the model's;
    a -1 where the model has a fixed size takes that size."""
    model = tensor.dims(max_batch_size)
    fits = len(shape) == len(model) and all((r >= 1 or r == -1) and (m == -1 or r in (-1, m)) for r, m in zip(shape, model))
    if not fits:
        after = " after the batch dimension" if max_batch_size > 0 else ""
        raise where.error(f"{field}.reshape", f"shape is {list(shape)}, but the model's {tensor.kind} has shape "
                          f"{list(tensor.shape)}: give {list(model)}, its shape{after}")
    return tuple(m if r == -1 else r for r, m in zip(shape, model))


def _client_dims(stated: tuple[int, ...], reshape: tuple[int, ...], field: str, where: Where) -> tuple[int, ...]:
    """The dims clients send and receive for a reshaped tensor: the same elements as ``reshape`` holds, for every
    size of a variable dim (one -1 on each side at most: the other sizes are then derived)."""
    if not stated:
        raise where.error(f"{field}.dims", "are needed with reshape: they are the shape clients send and receive")
    if any(d < 1 and d != -1 for d in stated):
        raise where.error(f"{field}.dims", f"are {list(stated)}; each dim is a size >= 1, or -1 for a variable size")
    fixed_dims, fixed_model = math.prod(d for d in stated if d != -1), math.prod(d for d in reshape if d != -1)
    variable = (stated.count(-1), reshape.count(-1))
    if variable == (0, 0):
        fits = fixed_dims == fixed_model
    else:
        fits = variable == (1, 1) and fixed_dims % fixed_model == 0
    if not fits:
        raise where.error(f"{field}.dims", f"are {list(stated)}, which cannot always hold the elements of the reshape "
                          f"{list(reshape)}: give dims with as many elements (at most one -1 on each side, the dims' "
                          "fixed sizes a multiple of the reshape's)")
    return stated

"""The dataplane's own request and response types: no protobuf, no transport.

Tensors are numpy arrays already shaped and typed by the codec (views over the
request bytes, or over a shared-memory region, where possible); BYTES tensors are
object arrays of ``bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from model_store.config import TensorSpec
    from server.shared_memory import TensorRegion


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str = ""  # "" serves the default (latest ready) version
    id: str = ""
    inputs: list[InputTensor] = field(default_factory=list)
    requested_outputs: list[str] | None = None  # None: all outputs
    parameters: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None  # time.monotonic() seconds; None: no deadline
    trace: Any = None  # an ops.tracing.RequestTrace when tracing is on, else None
    tenant: str = ""  # from the transport's tenant header (fleet mode); else the `tenant` parameter is read
    # The transport's check that it can encode the outputs as the caller asked (REST: BF16 has no JSON
    # form). Validation calls it with the specs of the outputs the response will hold, once the model
    # version is known and before the request queues; it raises InvalidInput. None: nothing to check.
    check_outputs: "Callable[[Sequence[TensorSpec]], None] | None" = None
    # Triton's classification extension (server/classification.py): output name -> how many top classes to
    # return instead of the tensor. None when no output asks for it; shared, never mutated.
    classification: Mapping[str, int] | None = None
    # Outputs the caller asked for in shared-memory regions (server/shared_memory.py), by name; None: none.
    output_regions: "dict[str, TensorRegion] | None" = None
    # A step of an ensemble's request (server/ensemble.py): its ``priority`` is the ensemble request's, and a
    # level its model does not have runs at that model's default level instead of being refused (Triton's rule).
    ensemble_step: bool = False


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]
    output_regions: "dict[str, TensorRegion] | None" = None  # the request's: the encoders write these there

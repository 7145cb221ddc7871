"""A model's sequence_batching section, checked against its ONNX signature (Triton's sequence batcher).

A stateful model runs the requests of one sequence (the ``sequence_id`` a client gives them, from a
``sequence_start`` request to a ``sequence_end`` one) one after another, in order. ``control_input``
names model inputs the server fills for each request: START, END and READY (a false/true value) and
CORRID (the sequence's id). ``state`` names implicit state: the model's ``output_name`` of one request
becomes its ``input_name`` in the next request of the same sequence, the first request getting the
initial state (zeros, or a file of ``initial_state/``). Requests carry neither: they are left out of the
model's served inputs and outputs (model_store/complete.py). The ``direct`` and ``oldest`` strategies'
delay and preferred batch sizes batch the requests of different sequences together.

``read`` returns the checked ``SequenceBatching``, or None for a model without the section; each error
is a ``ConfigError`` naming the field and saying what is accepted. Pure: reads no files (the initial
state files are read at load). Imports model_store.sequence_types, .datatypes, .options and the generated config
messages; must not import server, batching, kernels or grpc.
"""

from __future__ import annotations

from collections.abc import Mapping

from model_store.sequence_types import (
    DEFAULT_MAX_SEQUENCE_IDLE_US,
    DEFAULT_MAX_SEQUENCES,
    SequenceBatching,
    SequenceControl,
    SequenceState,
)
from model_store.datatypes import BY_CONFIG_NAME, Datatype
from model_store.options import Where
from model_store.protos import model_config_pb2 as pb

INITIAL_STATE_FOLDER = "initial_state"  # in the model folder, as Triton's
_KINDS = {"CONTROL_SEQUENCE_START": "START", "CONTROL_SEQUENCE_END": "END", "CONTROL_SEQUENCE_READY": "READY",
          "CONTROL_SEQUENCE_CORRID": "CORRID"}
_FLAG_TYPES = (("int32_false_true", "INT32"), ("fp32_false_true", "FP32"), ("bool_false_true", "BOOL"))
_CORRID_TYPES = ("UINT64", "INT64", "UINT32", "INT32", "BYTES")

Tensors = Mapping[str, tuple[Datatype, tuple[int, ...]]]  # a model's inputs or outputs: datatype and dims


def read(msg: pb.ModelConfig, inputs: Tensors, outputs: Tensors, max_batch_size: int,
         where: Where) -> SequenceBatching | None:
    """The checked sequence_batching of ``msg`` (see the module docstring); ``inputs`` and ``outputs`` are the
    model's, with their dims as a config writes them (without the batch dimension when the model batches)."""
    if not msg.HasField("sequence_batching"):
        return None
    sb = msg.sequence_batching
    if sb.iterative_sequence:
        raise where.error("sequence_batching.iterative_sequence", "is true, which fleetserve does not support: "
                          "each request gets exactly one response; remove it")
    if msg.response_cache.enable:
        raise where.error("response_cache.enable", "is true, but a sequence's answers depend on its state, so "
                          "they cannot be cached; remove it")
    listed = {entry.name for entry in msg.input} | {entry.name for entry in msg.output}
    controls = _controls(sb, inputs, listed, where)
    states = _states(sb, inputs, outputs, listed, {c.input_name for c in controls}, where)
    choice = sb.WhichOneof("strategy_choice")
    if choice == "oldest":
        oldest = sb.oldest
        if oldest.max_candidate_sequences < 0:
            raise where.error("sequence_batching.oldest.max_candidate_sequences",
                              f"is {oldest.max_candidate_sequences}; give a number of sequences >= 1 (0: the default, "
                              f"{DEFAULT_MAX_SEQUENCES})")
        sizes = tuple(sorted(set(oldest.preferred_batch_size)))
        if sizes and (sizes[0] < 1 or sizes[-1] > max(max_batch_size, 1)):
            raise where.error("sequence_batching.oldest.preferred_batch_size",
                              f"is {list(oldest.preferred_batch_size)}; each size is 1..{max(max_batch_size, 1)} "
                              "(max_batch_size)")
        return SequenceBatching(
            max_idle_us=sb.max_sequence_idle_microseconds or DEFAULT_MAX_SEQUENCE_IDLE_US, controls=controls,
            states=states, strategy="oldest", max_queue_delay_us=oldest.max_queue_delay_microseconds,
            preferred_batch_size=sizes, max_sequences=oldest.max_candidate_sequences or DEFAULT_MAX_SEQUENCES,
            preserve_ordering=oldest.preserve_ordering,
        )
    utilization = sb.direct.minimum_slot_utilization
    if not 0.0 <= utilization <= 1.0:
        raise where.error("sequence_batching.direct.minimum_slot_utilization", f"is {utilization:g}; give 0 to 1")
    return SequenceBatching(
        max_idle_us=sb.max_sequence_idle_microseconds or DEFAULT_MAX_SEQUENCE_IDLE_US, controls=controls,
        states=states, max_queue_delay_us=sb.direct.max_queue_delay_microseconds,
        minimum_slot_utilization=utilization,
    )


def _controls(sb: pb.ModelSequenceBatching, inputs: Tensors, listed: set[str],
              where: Where) -> tuple[SequenceControl, ...]:
    controls: list[SequenceControl] = []
    for index, entry in enumerate(sb.control_input):
        field = f"sequence_batching.control_input[{index}]"
        model = _model_input(entry.name, inputs, listed, field, where)
        if len(entry.control) != 1:
            raise where.error(f"{field}.control", f"lists {len(entry.control)} controls; give one control per input")
        control = entry.control[0]
        kind = _KINDS[pb.ModelSequenceBatching.Control.Kind.Name(control.kind)]
        if any(c.kind == kind for c in controls):
            raise where.error(f"{field}.control", f"is a second CONTROL_SEQUENCE_{kind}; give each kind once")
        if any(c.input_name == entry.name for c in controls):
            raise where.error(f"{field}.name", f'"{entry.name}" is given two controls; give each input one')
        if model[1] != (1,):
            raise where.error(f"{field}.name", f'is the model input "{entry.name}" of dims {list(model[1])}; a '
                              "control input holds one value per request: dims [1]")
        given = [(name, datatype) for name, datatype in _FLAG_TYPES if getattr(control, name)]
        if kind == "CORRID":
            if given:
                raise where.error(f"{field}.control", f"gives {given[0][0]}, but CONTROL_SEQUENCE_CORRID takes "
                                  "data_type only (the sequence's id is the value)")
            datatype = _datatype(control.data_type, f"{field}.control.data_type", where)
            if datatype.name not in _CORRID_TYPES:
                raise where.error(f"{field}.control.data_type", f"is {datatype.config_name}; a sequence id is "
                                  "TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 or TYPE_STRING")
            values: tuple[float, float] = (0, 1)
        else:
            if len(given) != 1:
                raise where.error(f"{field}.control", f"CONTROL_SEQUENCE_{kind} takes one of int32_false_true, "
                                  "fp32_false_true or bool_false_true (the false value, then the true value)")
            name, type_name = given[0]
            pair = tuple(getattr(control, name))
            if len(pair) != 2:
                raise where.error(f"{field}.control.{name}", f"has {len(pair)} values; give two: false, then true")
            datatype = BY_CONFIG_NAME[f"TYPE_{type_name}"]
            values = (float(pair[0]), float(pair[1]))
        if datatype != model[0]:
            raise where.error(f"{field}.control", f"sets a {datatype.config_name} value, but the model input "
                              f'"{entry.name}" is {model[0].config_name}')
        controls.append(SequenceControl(entry.name, kind, datatype, values))
    return tuple(controls)


def _states(sb: pb.ModelSequenceBatching, inputs: Tensors, outputs: Tensors, listed: set[str], controls: set[str],
            where: Where) -> tuple[SequenceState, ...]:
    states: list[SequenceState] = []
    for index, entry in enumerate(sb.state):
        field = f"sequence_batching.state[{index}]"
        if entry.input_name in controls or any(s.input_name == entry.input_name for s in states):
            raise where.error(f"{field}.input_name", f'"{entry.input_name}" is filled twice (by another state or '
                              "a control input)")
        model_in = _model_input(entry.input_name, inputs, listed, f"{field}.input_name", where)
        if entry.output_name not in outputs:
            raise where.error(f"{field}.output_name", f'"{entry.output_name}" is not an output of the model; its '
                              f"outputs: {', '.join(outputs) or 'none'}")
        if entry.output_name in listed:
            raise where.error(f"{field}.output_name", f'"{entry.output_name}" is listed in output too; a state is '
                              "kept by the server, not answered: remove it from output")
        if any(s.output_name == entry.output_name for s in states):
            raise where.error(f"{field}.output_name", f'"{entry.output_name}" is the output of another state')
        datatype = _datatype(entry.data_type, f"{field}.data_type", where)
        model_out = outputs[entry.output_name]
        for side, (model_type, model_dims) in (("input", model_in), ("output", model_out)):
            if model_type != datatype:
                raise where.error(f"{field}.data_type", f"is {datatype.config_name}, but the model's state {side} is "
                                  f"{model_type.config_name}")
            if not _fits(tuple(entry.dims), model_dims):
                raise where.error(f"{field}.dims", f"are {list(entry.dims)}, but the model's state {side} has dims "
                                  f"{list(model_dims)}")
        dims = tuple(int(d) for d in entry.dims)
        if not dims or any(d < 1 and d != -1 for d in dims):
            raise where.error(f"{field}.dims", f"are {list(dims)}; give the state's dims (without the batch "
                              "dimension), each >= 1 or -1")
        initial_dims, initial_file = _initial(entry, datatype, dims, field, where)
        states.append(SequenceState(entry.input_name, entry.output_name, datatype, dims, initial_dims, initial_file))
    return tuple(states)


def _initial(entry: pb.ModelSequenceBatching.State, datatype: Datatype, dims: tuple[int, ...], field: str,
             where: Where) -> tuple[tuple[int, ...], str]:
    if len(entry.initial_state) > 1:
        raise where.error(f"{field}.initial_state", "lists more than one; give one initial state")
    if not entry.initial_state:
        if -1 in dims:
            raise where.error(f"{field}.initial_state", f"is needed: the state's dims {list(dims)} have a variable "
                              "size, so the first request's state needs an initial_state with fixed dims")
        return dims, ""
    initial = entry.initial_state[0]
    if initial.data_type not in (pb.TYPE_INVALID, entry.data_type):
        raise where.error(f"{field}.initial_state.data_type", "differs from the state's data_type")
    initial_dims = tuple(int(d) for d in initial.dims) or dims
    if any(d < 1 for d in initial_dims) or not _fits(initial_dims, dims):
        raise where.error(f"{field}.initial_state.dims", f"are {list(initial.dims)}; give fixed sizes (>= 1) that fit "
                          f"the state's dims {list(dims)}")
    choice = initial.WhichOneof("state_data")
    if choice == "data_file":
        name = initial.data_file
        if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise where.error(f"{field}.initial_state.data_file", f"{name!r} must be a file name in the model "
                              f"folder's {INITIAL_STATE_FOLDER}/ folder")
        if datatype.itemsize == 0:
            raise where.error(f"{field}.initial_state.data_file", "is not supported for a TYPE_STRING state; use "
                              "zero_data (empty strings)")
        return initial_dims, name
    if choice != "zero_data":
        raise where.error(f"{field}.initial_state", "needs zero_data: true or a data_file")
    return initial_dims, ""


def _model_input(name: str, inputs: Tensors, listed: set[str], field: str,
                 where: Where) -> tuple[Datatype, tuple[int, ...]]:
    if name not in inputs:
        raise where.error(field, f'"{name}" is not an input of the model; its inputs: {", ".join(inputs) or "none"}')
    if name in listed:
        raise where.error(field, f'"{name}" is listed in input too; the server fills it for each request, which '
                          "does not carry it: remove it from input")
    return inputs[name]


def _datatype(value: int, field: str, where: Where) -> Datatype:
    try:
        return BY_CONFIG_NAME[pb.DataType.Name(value)]
    except (ValueError, KeyError):
        raise where.error(field, "is needed: the tensor's data type (TYPE_FP32, ...)") from None


def _fits(dims: tuple[int, ...], model: tuple[int, ...]) -> bool:
    return len(dims) == len(model) and all(a == b or -1 in (a, b) for a, b in zip(dims, model))

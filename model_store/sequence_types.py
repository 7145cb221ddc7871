"""The sequence_batching section of a model config as fleetserve holds it (Triton's ModelSequenceBatching).

model_store/sequence.py reads and checks it; ``ModelConfig.sequence_batching`` holds it; server/sequences.py
runs it. Immutable. Imports model_store.datatypes and the generated config messages only.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_store.datatypes import Datatype
from model_store.protos import model_config_pb2 as pb

DEFAULT_MAX_SEQUENCE_IDLE_US = 1_000_000  # Triton's: a sequence idle this long is released
DEFAULT_MAX_SEQUENCES = 4096  # live sequences of one model version (their states are held in memory)


@dataclass(frozen=True)
class SequenceControl:
    """A value the sequence batcher gives the model in one of its inputs (Triton's ModelSequenceBatching.Control)."""

    input_name: str
    kind: str  # "START", "END", "READY" (false/true) or "CORRID" (the sequence's id)
    datatype: Datatype
    false_true: tuple[float, float] = (0, 1)  # the values for false and true (not CORRID's)


@dataclass(frozen=True)
class SequenceState:
    """An implicit state (Triton's ModelSequenceBatching.State): the model's ``output_name`` of one request of a
    sequence is its ``input_name`` in the next; the first request's is the initial state."""

    input_name: str
    output_name: str
    datatype: Datatype
    dims: tuple[int, ...]  # without the batch dimension; -1: may change from request to request
    initial_dims: tuple[int, ...]  # the initial state's shape (fixed)
    initial_file: str = ""  # its data, raw and row-major, in the model folder's initial_state/; "": zeros


@dataclass(frozen=True)
class SequenceBatching:
    """Triton's sequence_batching: requests of one sequence (``sequence_id``) run one after another, in order,
    with the sequence's state carried between them; requests of different sequences batch together
    (model_store/sequence.py reads it, server/sequences.py runs it)."""

    max_idle_us: int = DEFAULT_MAX_SEQUENCE_IDLE_US
    controls: tuple[SequenceControl, ...] = ()
    states: tuple[SequenceState, ...] = ()
    strategy: str = "direct"  # or "oldest": the same schedule here (the README's Sequences)
    max_queue_delay_us: int = 0
    preferred_batch_size: tuple[int, ...] = ()
    max_sequences: int = DEFAULT_MAX_SEQUENCES
    minimum_slot_utilization: float = 0.0  # direct's; reported, not used
    preserve_ordering: bool = False  # oldest's; reported (a sequence's requests keep their order anyway)

    @property
    def server_inputs(self) -> frozenset[str]:
        """The model inputs the server fills (controls and states): requests do not carry them."""
        return frozenset(c.input_name for c in self.controls) | frozenset(s.input_name for s in self.states)

    @property
    def state_outputs(self) -> frozenset[str]:
        """The model outputs that are states: kept by the server, not answered."""
        return frozenset(s.output_name for s in self.states)

    def fill_proto(self, msg: pb.ModelSequenceBatching) -> None:
        """Write this section into ``msg`` as Triton's config writes it (the ModelConfig RPC)."""
        msg.max_sequence_idle_microseconds = self.max_idle_us
        for control in self.controls:
            written = msg.control_input.add(name=control.input_name).control.add(
                kind=pb.ModelSequenceBatching.Control.Kind.Value(f"CONTROL_SEQUENCE_{control.kind}"))
            if control.kind == "CORRID":
                written.data_type = pb.DataType.Value(control.datatype.config_name)
            elif control.datatype.name == "FP32":
                written.fp32_false_true.extend(control.false_true)
            elif control.datatype.name == "BOOL":
                written.bool_false_true.extend(bool(v) for v in control.false_true)
            else:
                written.int32_false_true.extend(int(v) for v in control.false_true)
        for state in self.states:
            entry = msg.state.add(input_name=state.input_name, output_name=state.output_name,
                                  data_type=pb.DataType.Value(state.datatype.config_name), dims=state.dims)
            initial = entry.initial_state.add(data_type=entry.data_type, dims=state.initial_dims)
            if state.initial_file:
                initial.data_file = state.initial_file
            else:
                initial.zero_data = True
        if self.strategy == "oldest":
            msg.oldest.max_candidate_sequences = self.max_sequences
            msg.oldest.preferred_batch_size.extend(self.preferred_batch_size)
            msg.oldest.max_queue_delay_microseconds = self.max_queue_delay_us
            msg.oldest.preserve_ordering = self.preserve_ordering
        else:
            msg.direct.max_queue_delay_microseconds = self.max_queue_delay_us
            msg.direct.minimum_slot_utilization = self.minimum_slot_utilization

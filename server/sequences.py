"""A sequence model's requests (Triton's sequence batching): the tensors the server adds and keeps.

model_store/sequence.py reads the config; batching/sequences.py keeps each sequence's requests in order.
Here, for each request of a sequence: the control inputs (START and END as the request's flags say,
READY always true, CORRID the sequence's id) in the datatype and false/true values the config gives,
and the sequence's state inputs (the initial state for a request that starts it); after it ran, the
state outputs become the sequence's state and are not answered. A batching model's request of a
sequence carries one row, so that requests of different sequences batch together row by row; its
states keep their batch dimension of 1.

Imports numpy, model_store (config, errors) and batching.sequences; transport-free.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable

import numpy as np

from batching.sequences import Sequences
from model_store.config import ModelConfig
from model_store.sequence_types import SequenceControl
from model_store.sequence import INITIAL_STATE_FOLDER
from ops.errors import ConfigError, InvalidInput

if TYPE_CHECKING:
    from server.sequence_owners import SequenceOwners

State = dict[str, np.ndarray]  # a sequence's state inputs, by input name
# (feeds, rows, key, deadline, trace, priority, timeout_us) -> the request's outputs, by name
Submit = Callable[[dict[str, np.ndarray], int, tuple, "float | None", Any, int, int],
                  "asyncio.Future[dict[str, np.ndarray]]"]


@dataclass(slots=True)
class _Item:
    feeds: dict[str, np.ndarray]
    key: tuple
    deadline: float | None
    trace: Any
    priority: int
    timeout_us: int


def read_initial_states(config: ModelConfig, model_folder: Path) -> State:
    """Each state's initial value, read-only (a batching model's with its batch dimension of 1). Blocking (reads
    the ``initial_state/`` files); raises ``ConfigError`` for a file that is missing or of the wrong size."""
    assert config.sequence_batching is not None
    states: State = {}
    for state in config.sequence_batching.states:
        dtype = state.datatype.numpy
        if not state.initial_file:
            value = (np.full(state.initial_dims, b"", dtype=object) if state.datatype.itemsize == 0
                     else np.zeros(state.initial_dims, dtype))
        else:
            path = model_folder / INITIAL_STATE_FOLDER / state.initial_file
            expected = math.prod(state.initial_dims) * state.datatype.itemsize
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"model '{config.name}': the initial state of '{state.input_name}' cannot be read "
                                  f"from {path}: {exc.strerror or exc}") from exc
            if len(data) != expected:
                raise ConfigError(f"model '{config.name}': {path} holds {len(data)} bytes, but the initial state of "
                                  f"'{state.input_name}' ({state.datatype.config_name} {list(state.initial_dims)}) "
                                  f"takes {expected}")
            value = np.frombuffer(data, dtype).reshape(state.initial_dims)
        if config.max_batch_size > 0:
            value = value[np.newaxis]
        value.setflags(write=False)
        states[state.input_name] = value
    return states


def warmup_feeds(config: ModelConfig, initial: State, rows: int) -> dict[str, np.ndarray]:
    """The control and state inputs of a warm-up run of ``rows`` rows: a starting request, initial states."""
    assert config.sequence_batching is not None
    feeds = {c.input_name: _control_value(c, 0, True, False, rows if config.max_batch_size > 0 else 0)
             for c in config.sequence_batching.controls}
    for name, value in initial.items():
        feeds[name] = np.repeat(value, rows, axis=0) if config.max_batch_size > 0 else value
    return feeds


class SequenceRunner:
    """One model version's sequences; see the module docstring. Loop-bound."""

    def __init__(self, config: ModelConfig, initial: State, submit: Submit, name: str,
                 owners: "SequenceOwners | None" = None) -> None:
        """``owners``: fleet mode's record of which replica holds each sequence (server/sequence_owners.py)."""
        sb = config.sequence_batching
        assert sb is not None
        self._config = config
        self._batching = config.max_batch_size > 0
        self._controls = sb.controls
        self._states = sb.states
        self._state_outputs = frozenset(s.output_name for s in sb.states)  # kept, not answered
        self._corrid = next((c for c in sb.controls if c.kind == "CORRID"), None)
        self._initial = initial
        self._submit = submit
        self._rows = 1 if self._batching else 0
        self._flags = {(c.input_name, value): _control_value(c, 0, value, value, self._rows)
                       for c in sb.controls if c.kind != "CORRID" for value in (False, True)}
        idle_s = sb.max_idle_us / 1e6
        observer = owners.observer(config.name, idle_s) if owners is not None else None
        self.table: Sequences[_Item, dict[str, np.ndarray], State] = Sequences(
            name, self._run, lambda: self._initial, idle_s, sb.max_sequences, observer)

    def submit(self, feeds: dict[str, np.ndarray], rows: int, key: tuple, deadline: float | None, trace: Any,
               priority: int, timeout_us: int, sequence: tuple[Hashable, bool, bool]) -> "asyncio.Future[dict[str, np.ndarray]]":
        sequence_id, start, end = sequence
        name = self._config.name
        if sequence_id in (0, ""):
            raise InvalidInput(f"model '{name}' runs sequences: a request needs a sequence_id (a non-zero integer or "
                               "a non-empty string) naming its sequence, with sequence_start on the first request")
        if self._batching and rows != 1:
            raise InvalidInput(f"model '{name}' runs sequences: a request of a sequence carries one row (batch size "
                               f"1), not {rows}; send each sequence's rows as requests of their own")
        corrid = self._corrid
        if corrid is not None and isinstance(sequence_id, str) != (corrid.datatype.itemsize == 0):
            kind = "a string" if corrid.datatype.itemsize == 0 else "an integer"
            raise InvalidInput(f"model '{name}': sequence_id must be {kind}: the model takes it as "
                               f"{corrid.datatype.config_name} in '{corrid.input_name}'")
        return self.table.submit(sequence_id, start, end, _Item(feeds, key, deadline, trace, priority, timeout_us))

    def _run(self, item: _Item, state: State, sequence_id: Hashable, start: bool,
             end: bool) -> "asyncio.Future[tuple[dict[str, np.ndarray], State]]":
        feeds = dict(item.feeds)
        for control in self._controls:
            if control.kind == "CORRID":
                feeds[control.input_name] = _control_value(control, sequence_id, False, False, self._rows)
            else:
                value = start if control.kind == "START" else end if control.kind == "END" else True
                feeds[control.input_name] = self._flags[(control.input_name, value)]
        feeds.update(state)
        key = item.key + tuple(value.shape[1:] for value in state.values()) if self._batching else item.key
        queued = self._submit(feeds, 1, key, item.deadline, item.trace, item.priority, item.timeout_us)
        ran: asyncio.Future[tuple[dict[str, np.ndarray], State]] = asyncio.get_running_loop().create_future()
        queued.add_done_callback(lambda done: self._split(done, ran))
        ran.add_done_callback(lambda caller: queued.cancel() if caller.cancelled() else None)
        return ran

    def _split(self, done: "asyncio.Future[dict[str, np.ndarray]]",
               ran: "asyncio.Future[tuple[dict[str, np.ndarray], State]]") -> None:
        """The model's outputs as the caller's answer and the sequence's next state (copied: an output is a view
        of its whole batch's, which a state kept for long would hold on to)."""
        if ran.done():
            return
        if done.cancelled():
            ran.cancel()
            return
        error = done.exception()
        if error is not None:
            ran.set_exception(error)
            return
        outputs = done.result()
        state = {s.input_name: np.array(outputs[s.output_name]) for s in self._states}
        kept = self._state_outputs
        ran.set_result(({k: v for k, v in outputs.items() if k not in kept}, state))

    def close(self, reason: str) -> None:
        self.table.close(reason)


def _control_value(control: SequenceControl, sequence_id: Hashable, start: bool, end: bool,
                   rows: int) -> np.ndarray:
    """A control input's tensor for one request (``rows`` 0: a model that does not batch, shape [1])."""
    shape = (rows, 1) if rows else (1,)
    if control.kind == "CORRID":
        if control.datatype.itemsize == 0:
            return np.full(shape, str(sequence_id).encode(), dtype=object)
        bits = control.datatype.itemsize * 8
        assert isinstance(sequence_id, int)  # SequenceRunner.submit checked it against the datatype
        number = sequence_id & ((1 << bits) - 1)  # as Triton: a 32-bit id holds the low-order bits
        if control.datatype.name.startswith("INT") and number >= 1 << (bits - 1):
            number -= 1 << bits
        return np.full(shape, number, dtype=control.datatype.numpy)
    flag = start if control.kind == "START" else end if control.kind == "END" else True
    value = np.full(shape, control.false_true[1 if flag else 0], dtype=control.datatype.numpy)
    value.setflags(write=False)
    return value


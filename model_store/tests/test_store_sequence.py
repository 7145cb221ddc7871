"""sequence_batching read against the accumulator model's signature (model_store/sequence.py, through
complete.build_config): controls and states left out of the served tensors, the strategy's batching, and
configs that cannot run refused naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from model_store.complete import ModelTensor, build_config
from model_store.config import ModelConfig
from model_store.pbtxt import parse_config_text, stated_fields
from model_store.stateful_testing import ACCUMULATOR_SEQUENCE_BATCHING, write_accumulator_model
from ops.errors import ConfigError

SOURCE = "acc/config.pbtxt"
ZEROS = "initial_state { data_type: TYPE_FP32, dims: [ 4 ], zero_data: true }"
Signature = tuple[list[ModelTensor], list[ModelTensor]]


@pytest.fixture(scope="module")
def signature(tmp_path_factory: pytest.TempPathFactory, ort_signature: Callable[[Path], Signature]) -> Signature:
    return ort_signature(write_accumulator_model(tmp_path_factory.mktemp("acc") / "model.onnx"))


def build(signature: Signature, text: str) -> ModelConfig:
    return build_config("acc", parse_config_text(text, SOURCE), *signature, SOURCE, stated=stated_fields(text))


def config(initial: str = ZEROS, strategy: str = "direct { max_queue_delay_microseconds: 100 }",
           extra: str = "") -> str:
    return "max_batch_size: 8\n" + extra + ACCUMULATOR_SEQUENCE_BATCHING.format(
        idle_us=0, initial=initial, strategy=strategy)


def test_controls_and_states_are_the_servers_not_the_requests(signature: Signature) -> None:
    built = build(signature, config())

    assert [s.name for s in built.inputs] == ["INPUT0"]
    assert "STATE_OUT" not in [s.name for s in built.outputs]
    sb = built.sequence_batching
    assert sb is not None and sb.max_idle_us == 1_000_000  # 0: Triton's default, 1 s
    assert [(c.input_name, c.kind) for c in sb.controls] == [("START", "START"), ("END", "END"), ("READY", "READY"),
                                                              ("CORRID", "CORRID")]
    assert (sb.states[0].input_name, sb.states[0].output_name, sb.states[0].initial_dims) == ("STATE_IN", "STATE_OUT",
                                                                                             (4,))
    assert built.dynamic_batching is None  # one scheduling choice, as in Triton's schema
    assert built.batching is not None and built.batching.max_queue_delay_us == 100
    assert built.to_proto().sequence_batching.direct.max_queue_delay_microseconds == 100


def test_oldest_gives_the_bound_and_the_preferred_sizes(signature: Signature) -> None:
    sb = build(signature, config(strategy="oldest { max_candidate_sequences: 3, preferred_batch_size: [ 4, 2 ] }")
               ).sequence_batching

    assert sb is not None and (sb.strategy, sb.max_sequences, sb.preferred_batch_size) == ("oldest", 3, (2, 4))


@pytest.mark.parametrize("text, field, says", [
    (config().replace('name: "START"', 'name: "NOPE"'), "sequence_batching.control_input[0]",
     '"NOPE" is not an input of the model'),
    (config().replace("kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ]",
                      "kind: CONTROL_SEQUENCE_START, fp32_false_true: [ 0, 1 ]"),
     "sequence_batching.control_input[0].control", 'sets a TYPE_FP32 value, but the model input "START" is TYPE_INT32'),
    (config().replace("int32_false_true: [ 0, 1 ] } ] }", "int32_false_true: [ 1 ] } ] }", 1),
     "sequence_batching.control_input[0].control.int32_false_true", "has 1 values; give two"),
    (config().replace("kind: CONTROL_SEQUENCE_END", "kind: CONTROL_SEQUENCE_START"),
     "sequence_batching.control_input[1].control", "is a second CONTROL_SEQUENCE_START"),
    (config().replace("data_type: TYPE_UINT64", "data_type: TYPE_FP32"),
     "sequence_batching.control_input[3].control.data_type", "a sequence id is TYPE_UINT64"),
    (config().replace('output_name: "STATE_OUT"', 'output_name: "OUTPUT9"'), "sequence_batching.state[0].output_name",
     '"OUTPUT9" is not an output of the model'),
    (config().replace("data_type: TYPE_FP32, dims: [ 4 ]\n", "data_type: TYPE_INT32, dims: [ 4 ]\n"),
     "sequence_batching.state[0].data_type", "is TYPE_INT32, but the model's state input is TYPE_FP32"),
    (config(initial=""), "sequence_batching.state[0].initial_state", None),  # fixed dims: zeros, no error
    (config(initial='initial_state { data_type: TYPE_FP32, dims: [ 4 ], data_file: "../x" }'),
     "sequence_batching.state[0].initial_state.data_file", "must be a file name in the model folder's initial_state/"),
    (config(strategy="oldest { preferred_batch_size: [ 9 ] }"), "sequence_batching.oldest.preferred_batch_size",
     "each size is 1..8"),
    (config(extra='input [ { name: "START" } ]\n'), "sequence_batching.control_input[0]",
     'is listed in input too; the server fills it'),
    (config(extra="response_cache { enable: true }\n"), "response_cache.enable", "cannot be cached"),
    (config(extra='parameters { key: "latency_slo_ms" value: { string_value: "5" } }\n'),
     "parameters.latency_slo_ms", "needs dynamic batching"),
])
def test_a_sequence_config_that_cannot_run_is_refused_naming_the_field(
        signature: Signature, text: str, field: str, says: str | None) -> None:
    if says is None:
        assert build(signature, text).sequence_batching is not None
        return
    with pytest.raises(ConfigError) as caught:
        build(signature, text)

    assert caught.value.message.startswith(f"{SOURCE}: {field}: "), caught.value.message
    assert says in caught.value.message


def test_a_variable_state_needs_a_fixed_initial_state(signature: Signature) -> None:
    text = config(initial="").replace("dims: [ 4 ]\n", "dims: [ -1 ]\n")

    with pytest.raises(ConfigError, match="initial_state: is needed: the state's dims \\[-1\\] have a variable size"):
        build(signature, text)
    state = build(signature, config().replace("dims: [ 4 ]\n", "dims: [ -1 ]\n")).sequence_batching
    assert state is not None and (state.states[0].dims, state.states[0].initial_dims) == ((-1,), (4,))
    assert np.dtype(state.states[0].datatype.numpy) == np.float32

"""A stateful test model for sequence batching (model_store/sequence.py), and its config.

Built with onnx's helpers, deterministic, as model_store/testing.py's models are.
"""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto, helper

from model_store.testing import PathLike, _fp32, _save

def write_accumulator_model(path: PathLike, features: int = 4, batch: bool = True) -> Path:
    """A stateful model for sequence batching: OUTPUT0 = STATE_OUT = STATE_IN + INPUT0 (FP32 [features]),
    the running sum of a sequence once the server carries STATE_OUT into STATE_IN; and the control inputs
    START, END, READY (INT32 [1]) and CORRID (UINT64 [1]) given back as START_SEEN, END_SEEN, READY_SEEN
    and ID_SEEN. Each tensor has a leading ``batch`` dimension when ``batch``."""
    def shape(*dims: int) -> list[int | str]:
        return (["batch"] if batch else []) + list(dims)

    int32, uint64 = TensorProto.INT32, TensorProto.UINT64
    graph = helper.make_graph(
        [helper.make_node("Add", ["STATE_IN", "INPUT0"], ["SUM"]),
         helper.make_node("Identity", ["SUM"], ["OUTPUT0"]),
         helper.make_node("Identity", ["SUM"], ["STATE_OUT"]),
         helper.make_node("Identity", ["START"], ["START_SEEN"]),
         helper.make_node("Identity", ["END"], ["END_SEEN"]),
         helper.make_node("Identity", ["READY"], ["READY_SEEN"]),
         helper.make_node("Identity", ["CORRID"], ["ID_SEEN"])],
        "accumulator",
        [_fp32("INPUT0", shape(features)), _fp32("STATE_IN", shape(features)),
         helper.make_tensor_value_info("START", int32, shape(1)), helper.make_tensor_value_info("END", int32, shape(1)),
         helper.make_tensor_value_info("READY", int32, shape(1)),
         helper.make_tensor_value_info("CORRID", uint64, shape(1))],
        [_fp32("OUTPUT0", shape(features)), _fp32("STATE_OUT", shape(features)),
         helper.make_tensor_value_info("START_SEEN", int32, shape(1)),
         helper.make_tensor_value_info("END_SEEN", int32, shape(1)),
         helper.make_tensor_value_info("READY_SEEN", int32, shape(1)),
         helper.make_tensor_value_info("ID_SEEN", uint64, shape(1))],
    )
    return _save(path, graph)


ACCUMULATOR_SEQUENCE_BATCHING = """
sequence_batching {{
  max_sequence_idle_microseconds: {idle_us}
  control_input [
    {{ name: "START", control [ {{ kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "END", control [ {{ kind: CONTROL_SEQUENCE_END, int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "READY", control [ {{ kind: CONTROL_SEQUENCE_READY, int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "CORRID", control [ {{ kind: CONTROL_SEQUENCE_CORRID, data_type: TYPE_UINT64 }} ] }}
  ]
  state [ {{
    input_name: "STATE_IN", output_name: "STATE_OUT", data_type: TYPE_FP32, dims: [ 4 ]
    {initial}
  }} ]
  {strategy}
}}
"""  # the config of ``write_accumulator_model``'s sequence batching: format idle_us, initial and strategy

# The config of ``write_add_constant_model(features=4)`` as plus_one, ACC_PIPE's first step. A batch of it answers
# its priority-1 requests first, so without the ensemble's ordering a sequence's later request would overtake an
# earlier one.
PLUS_ONE = """
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 20000 priority_levels: 2 default_priority_level: 2 }
"""
# An ensemble: IN -> plus_one -> mid -> acc (write_accumulator_model) -> OUT, the running sum of each sequence's
# inputs plus one.
ACC_PIPE = """
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 4 ] } ]
ensemble_scheduling { step [
  { model_name: "plus_one" model_version: -1
    input_map { key: "INPUT0" value: "IN" } output_map { key: "OUTPUT0" value: "mid" } },
  { model_name: "acc" model_version: -1
    input_map { key: "INPUT0" value: "mid" } output_map { key: "OUTPUT0" value: "OUT" } }
] }
"""

"""Ensemble configs (model_store/ensemble.py): what the config alone can tell, and the steps checked against the
composing models' configs. Pure: parsed text in, a ``ModelConfig`` or a ``ConfigError`` out."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from model_store import ensemble
from model_store.config import EnsembleStep, ModelConfig, TensorSpec, datatype
from model_store.examples import REPOSITORY
from model_store.pbtxt import parse_config_text
from model_store.repository import ModelRepository
from model_store.sequence_types import SequenceBatching
from model_store.testing import write_config
from ops.errors import ConfigError

IO = """
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 8 ] } ]
"""

TWO_STEPS = IO + """
ensemble_scheduling { step [
  { model_name: "dense", model_version: -1, input_map { key: "INPUT0" value: "mid" }, output_map { key: "OUTPUT0" value: "OUT" } },
  { model_name: "add", model_version: 2, input_map { key: "INPUT0" value: "IN" }, output_map { key: "OUTPUT0" value: "mid" } }
] }
"""


def build(text: str, name: str = "ens") -> ModelConfig:
    return ensemble.build_config(name, parse_config_text(textwrap.dedent(text), "ens/config.pbtxt"), "ens/config.pbtxt")


def step(model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1) -> str:
    ins = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    outs = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: {version} {ins} {outs} }}'


def steps(*written: str) -> str:
    return IO + "ensemble_scheduling { step [ " + ", ".join(written) + " ] }"


def test_an_ensemble_config_reads_its_tensors_and_steps_as_written() -> None:
    config = build(TWO_STEPS)

    assert config.platform == "ensemble" and config.max_batch_size == 8 and config.dynamic_batching is None
    assert [(s.name, s.datatype.name, s.dims) for s in config.inputs] == [("IN", "FP32", (16,))]
    assert config.ensemble is not None
    assert [s.model_name for s in config.ensemble.steps] == ["dense", "add"]  # as written
    assert [s.model_name for s in config.ensemble.run_order()] == ["add", "dense"]  # each after what it reads
    assert config.ensemble.steps[1] == EnsembleStep("add", 2, (("INPUT0", "IN"),), (("OUTPUT0", "mid"),))
    assert (config.ensemble.steps[0].version_text, config.ensemble.steps[1].version_text) == ("", "2")
    assert config.ensemble.models == ("dense", "add")


def test_to_proto_gives_the_ensemble_back_as_triton_writes_it() -> None:
    msg = build(TWO_STEPS).to_proto()

    assert (msg.platform, msg.backend, msg.default_model_filename, len(msg.instance_group)) == ("ensemble", "", "", 0)
    assert [(s.model_name, s.model_version, dict(s.input_map), dict(s.output_map))
            for s in msg.ensemble_scheduling.step] == [
        ("dense", -1, {"INPUT0": "mid"}, {"OUTPUT0": "OUT"}), ("add", 2, {"INPUT0": "IN"}, {"OUTPUT0": "mid"})]


@pytest.mark.parametrize("text, field, says", [
    (IO, "ensemble_scheduling.step", "lists none"),
    (steps(step("a", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})).replace(
        'input [ { name: "IN", data_type: TYPE_FP32, dims: [ 16 ] } ]', 'input [ { name: "IN", dims: [ 16 ] } ]'),
     'input "IN".data_type', "is needed"),
    (steps(step("a", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})).replace("dims: [ 8 ]", "dims: [ ]"),
     'output "OUT".dims', "are needed"),
    (steps(step("a", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})).replace("dims: [ 8 ]", "dims: [ 0 ]"),
     'output "OUT".dims', "each dim is a size >= 1"),
    (steps(step("ens", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})), "step[0].model_name", "the ensemble itself"),
    (steps(step("../x", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})), "step[0].model_name", "path separator"),
    (steps(step("a", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}, version=0)), "step[0].model_version", "is 0"),
    (steps(step("a", {"INPUT0": "IN"}, {})), "step[0].output_map", "is empty"),
    (steps(step("a", {}, {"OUTPUT0": "OUT"})), "step[0].input_map", "is empty"),
    (steps(step("a", {"INPUT0": "IN"}, {"O1": "OUT", "O2": "OUT"})), "step[0].output_map", "from two outputs"),
    (steps(step("a", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}), step("b", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})),
     "step[1].output_map", "which step[0] writes too"),
    (steps(step("a", {"INPUT0": "IN"}, {"OUTPUT0": "IN"})), "step[0].output_map", "an input of the ensemble"),
    (steps(step("a", {"INPUT0": "nowhere"}, {"OUTPUT0": "OUT"})), "step[0].input_map",
     "reads 'nowhere', which is neither an input of the ensemble nor written by a step; tensors: IN, OUT"),
    (steps(step("a", {"INPUT0": "IN"}, {"OUTPUT0": "other"})), 'output "OUT"', "is written by no step"),
    (steps(step("a", {"INPUT0": "IN", "INPUT1": "x"}, {"OUTPUT0": "y"}), step("b", {"INPUT0": "y"}, {"OUTPUT0": "x"}),
           step("c", {"INPUT0": "y"}, {"OUTPUT0": "OUT"})),
     "ensemble_scheduling.step", "step[0] (model 'a'), step[1] (model 'b'), step[2] (model 'c') read from each other"),
    (IO.replace("max_batch_size: 8", "max_batch_size: 8\ninstance_group [ { count: 2 } ]")
     + "ensemble_scheduling { step [ " + step("a", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}) + " ] }",
     "instance_group", "an ensemble takes none"),
    (IO.replace("max_batch_size: 8", 'max_batch_size: 8\nbackend: "onnxruntime"')
     + "ensemble_scheduling { step [ " + step("a", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}) + " ] }",
     "backend", "has no backend"),
    (IO.replace("max_batch_size: 8", "max_batch_size: 8\nresponse_cache { enable: true }")
     + "ensemble_scheduling { step [ " + step("a", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}) + " ] }",
     "response_cache.enable", "composing models' configs"),
    (IO.replace("max_batch_size: 8", 'max_batch_size: 8\nparameters { key: "latency_slo_ms" value: { string_value: "5" } }')
     + "ensemble_scheduling { step [ " + step("a", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}) + " ] }",
     "parameters.latency_slo_ms", "set it on the composing models"),
])
def test_a_config_that_cannot_run_is_refused_naming_the_field(text: str, field: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(text)

    message = caught.value.message
    assert message.startswith("ens/config.pbtxt: ") and f"{field}: " in message
    assert says in message


def test_an_unread_input_is_refused() -> None:
    text = steps(step("a", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})).replace(
        'input [ { name: "IN", data_type: TYPE_FP32, dims: [ 16 ] } ]',
        'input [ { name: "IN", data_type: TYPE_FP32, dims: [ 16 ] }, { name: "SPARE", data_type: TYPE_FP32, dims: [ 1 ] } ]')

    with pytest.raises(ConfigError, match='input "SPARE": is read by no step'):
        build(text)


def test_the_defaults_triton_writes_into_a_complete_config_load() -> None:
    config = build(TWO_STEPS + '''
runtime: ""
optimization { priority: PRIORITY_DEFAULT input_pinned_memory { enable: true } }
model_transaction_policy { decoupled: false }
response_cache { enable: false }
''')

    assert config.ensemble is not None
    with pytest.raises(ConfigError, match="optimization.priority"):
        build(TWO_STEPS + "optimization { priority: PRIORITY_MAX }")
    with pytest.raises(ConfigError, match="optimization.execution_accelerators: is set, but an ensemble takes none"):
        build(TWO_STEPS + 'optimization { execution_accelerators { cpu_execution_accelerator [ { name: "cpu" } ] } }')


def test_dynamic_batching_and_ensemble_scheduling_are_one_choice() -> None:
    with pytest.raises(ConfigError):
        build(TWO_STEPS + "\ndynamic_batching { }")


# ---- the steps against the composing models ------------------------------------------------------------


def model(name: str, inputs: dict[str, tuple[str, tuple[int, ...]]], outputs: dict[str, tuple[str, tuple[int, ...]]],
          max_batch_size: int = 8) -> ModelConfig:
    return ModelConfig(
        name=name, max_batch_size=max_batch_size,
        inputs=tuple(TensorSpec(n, datatype(t), d) for n, (t, d) in inputs.items()),
        outputs=tuple(TensorSpec(n, datatype(t), d) for n, (t, d) in outputs.items()),
    )


ADD = model("add", {"INPUT0": ("FP32", (16,))}, {"OUTPUT0": ("FP32", (16,))})
DENSE = model("dense", {"INPUT0": ("FP32", (16,))}, {"OUTPUT0": ("FP32", (8,))})


def check(config: ModelConfig, *models: ModelConfig) -> None:
    by_name = {m.name: m for m in models}
    ensemble.check_steps(config, lambda s: by_name[s.model_name], "ens/config.pbtxt")


def test_steps_that_fit_their_models_pass() -> None:
    check(build(TWO_STEPS), ADD, DENSE)
    # -1 on either side of a dim fits any size
    check(build(TWO_STEPS), ADD, model("dense", {"INPUT0": ("FP32", (-1,))}, {"OUTPUT0": ("FP32", (-1,))}))


@pytest.mark.parametrize("models, says", [
    ((model("add", {"X": ("FP32", (16,))}, {"OUTPUT0": ("FP32", (16,))}), DENSE),
     "maps 'INPUT0', which model 'add' does not take; its inputs: X"),
    ((model("add", {"INPUT0": ("FP32", (16,)), "INPUT1": ("FP32", (16,))}, {"OUTPUT0": ("FP32", (16,))}), DENSE),
     "leaves out the model's input(s) INPUT1"),
    ((model("add", {"INPUT0": ("FP32", (16,))}, {"Y": ("FP32", (16,))}), DENSE),
     "maps 'OUTPUT0', which model 'add' does not give; its outputs: Y"),
    ((model("add", {"INPUT0": ("INT64", (16,))}, {"OUTPUT0": ("FP32", (16,))}), DENSE),
     "feeds ensemble input 'IN' (FP32 [16]) to input 'INPUT0', which takes INT64 [16]"),
    ((ADD, model("dense", {"INPUT0": ("FP32", (4,))}, {"OUTPUT0": ("FP32", (8,))})),
     "feeds 'mid' (output 'OUTPUT0' of model 'add') (FP32 [16]) to input 'INPUT0', which takes FP32 [4]"),
    ((ADD, model("dense", {"INPUT0": ("FP32", (16,))}, {"OUTPUT0": ("FP16", (8,))})),
     'output "OUT": is FP32 [8], but it is \'OUT\' (output \'OUTPUT0\' of model \'dense\'): FP16 [8]'),
    ((ADD, model("dense", {"INPUT0": ("FP32", (16,))}, {"OUTPUT0": ("FP32", (8,))}, max_batch_size=4)),
     "max_batch_size: is 8, more than model 'dense' takes (4)"),
    ((ADD, model("dense", {"INPUT0": ("FP32", (-1, 16))}, {"OUTPUT0": ("FP32", (-1, 8))}, max_batch_size=0)),
     "model 'dense' does not batch (max_batch_size 0)"),
])
def test_steps_that_do_not_fit_their_models_are_refused(models: tuple[ModelConfig, ...], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check(build(TWO_STEPS), *models)

    assert says in caught.value.message


def test_a_step_may_run_a_sequence_model() -> None:
    stateful = replace(DENSE, sequence_batching=SequenceBatching())

    check(build(TWO_STEPS), ADD, stateful)  # the ensemble passes a request's sequence to it (server/ensemble.py)


def test_an_ensemble_that_does_not_batch_hands_batching_models_a_leading_batch_dim() -> None:
    config = build(TWO_STEPS.replace("max_batch_size: 8", "max_batch_size: 0")
                   .replace("dims: [ 16 ]", "dims: [ 2, 16 ]").replace("dims: [ 8 ]", "dims: [ 2, 8 ]"))

    check(config, ADD, DENSE)
    with pytest.raises(ConfigError, match=r"which takes FP32 \[-1, 16\]"):
        check(build(TWO_STEPS.replace("max_batch_size: 8", "max_batch_size: 0")), ADD, DENSE)


# ---- the repository ----------------------------------------------------------------------------------


def test_an_ensembles_version_folders_are_versions_without_a_model_file(tmp_path: Path) -> None:
    write_config(tmp_path / "ens", TWO_STEPS)
    (tmp_path / "ens" / "1").mkdir()
    (tmp_path / "ens" / "3").mkdir()
    (tmp_path / "ens" / "notes").mkdir()

    source = ModelRepository(tmp_path).read("ens")

    assert source.is_ensemble
    assert (sorted(source.versions), source.missing) == ([1, 3], {})
    assert source.build_ensemble_config().ensemble is not None


def test_the_bundled_pipeline_example_is_an_ensemble_of_bundled_models() -> None:
    source = ModelRepository(REPOSITORY).read("pipeline")

    config = source.build_ensemble_config()

    assert config.ensemble is not None and config.ensemble.models == ("add_one", "dense")
    assert all((REPOSITORY / name).is_dir() for name in config.ensemble.models)
    assert sorted(source.versions) == [1]

"""Config overrides (model_store/override.py): parsed and checked as config.pbtxt is, used by the repository
and the registry in its place for one load.

The registry tests use fake servables built from the source they are given, so what each load read (its
config) is exact; the server tests (server/tests/test_config_override.py) load real models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_store.complete import ModelTensor
from model_store.config import ModelConfig
from model_store.override import read_override
from model_store.registry import ModelRegistry
from model_store.repository import ModelRepository, ModelSource
from model_store.testing import write_config
from ops.errors import ConfigError

SIGNATURE = ([ModelTensor("INPUT0", np.dtype(np.float32), (None, 16))],
             [ModelTensor("OUTPUT0", np.dtype(np.float32), (None, 8))])


def model_folder(root: Path, config: str | None = "max_batch_size: 4", versions: tuple[int, ...] = (1,),
                 filename: str = "model.onnx") -> Path:
    for version in versions:
        (root / "m" / str(version)).mkdir(parents=True, exist_ok=True)
        (root / "m" / str(version) / filename).write_bytes(b"model")
    if config is not None:
        write_config(root / "m", config)
    return root


@pytest.mark.parametrize("text, message", [
    ("", "config override of model 'm': is not valid JSON: Expecting value"),
    ('{"max_batch_size": 4', "config override of model 'm': is not valid JSON"),
    ('"max_batch_size: 4"', "config override of model 'm': is a string, not a JSON object"),
    ('{"max_batch_size": 4, "max_batch_size": 8}', 'is not valid JSON: field "max_batch_size" is given more than once'),
    ('{"name": "other"}', 'config override of model \'m\': name: is "other", but the load request is for model "m"'),
    ('{"max_batch_size": "four"}', "config override of model 'm': bad value: Failed to parse max_batch_size field"),
    ('{"model_metrics": {}}', 'field "model_metrics" of Triton\'s model configuration is not supported by fleetserve'),
    ('{"instance_group": [{"count": 1, "rate_limiter": {}}]}',
     "field instance_group.rate_limiter of Triton's model configuration is not supported by fleetserve"),
    ('{"dynamic_batching": {"preferred_batch": [2]}}',
     'unknown field "preferred_batch" in dynamic_batching (did you mean "preferred_batch_size"?)'),
    ('{"version_policy": {"specific": {"versions": []}}}', "config override of model 'm': version_policy.specific"),
    ('{"default_model_filename": "../model.onnx"}', "config override of model 'm': default_model_filename"),
    ('{"optimization": {"priority": "PRIORITY_MAX"}}', "config override of model 'm': optimization.priority: is"),
])
def test_an_override_that_does_not_parse_or_breaks_a_rule_is_refused_naming_the_override(text: str, message: str):
    with pytest.raises(ConfigError) as err:
        read_override("m", text)
    assert message in err.value.message


def test_an_override_builds_the_config_the_same_text_as_config_pbtxt_builds(tmp_path: Path):
    pbtxt = """
        max_batch_size: 0
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1, 16 ] } ]
        instance_group [ { count: 2 kind: KIND_CPU } ]
        parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
        optimization { priority: PRIORITY_DEFAULT input_pinned_memory { enable: true } }
    """
    json_text = """{"maxBatchSize": 0, "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": ["1", 16]}],
        "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
        "parameters": {"intra_op_thread_count": {"string_value": "2"}},
        "optimization": {"priority": "PRIORITY_DEFAULT", "input_pinned_memory": {"enable": true}}}"""
    repository = ModelRepository(model_folder(tmp_path, pbtxt))
    from_file = repository.read("m").build_config(*SIGNATURE)
    overridden = repository.read("m", read_override("m", json_text))
    from_override = overridden.build_config(*SIGNATURE)
    assert from_override == from_file and from_override.max_batch_size == 0  # stated, as in the file: no batching
    assert overridden.config_source == "config override of model 'm'"
    assert repository.read("m", read_override("m", "{}")).build_config(*SIGNATURE).max_batch_size > 0  # completed


def test_a_rule_that_needs_the_model_is_checked_when_it_loads_naming_the_override(tmp_path: Path):
    source = ModelRepository(model_folder(tmp_path)).read("m", read_override("m", '{"max_batch_size": 4, "input": '
                                                                              '[{"name": "INPUT0", "dims": [3]}]}'))
    with pytest.raises(ConfigError) as err:
        source.build_config(*SIGNATURE)
    assert err.value.message.startswith("config override of model 'm': input \"INPUT0\"")


def test_the_repository_reads_an_override_in_place_of_config_pbtxt(tmp_path: Path):
    repository = ModelRepository(model_folder(tmp_path, "max_batch_size: {", filename="custom.onnx"))
    with pytest.raises(ConfigError):
        repository.read("m")  # config.pbtxt does not parse ...
    source = repository.read("m", read_override("m", '{"default_model_filename": "custom.onnx"}'))
    assert list(source.versions) == [1] and not source.missing  # ... and is not read with an override
    first = repository.read("m", read_override("m", '{"max_batch_size": 4}')).version_fingerprint(1)
    assert first == repository.read("m", read_override("m", ' { "maxBatchSize" : 4 } ')).version_fingerprint(1)
    assert first != repository.read("m", read_override("m", '{"max_batch_size": 8}')).version_fingerprint(1)
    assert first != source.version_fingerprint(1)


class Loaded:
    """A fake servable: the config its load built from the source."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    async def close(self) -> None:
        pass


class Server:
    def __init__(self, root: Path) -> None:
        self.loads: list[tuple[int, int]] = []  # (version, max_batch_size)
        self.registry: ModelRegistry[Loaded] = ModelRegistry(ModelRepository(root), self.load)

    async def load(self, source: ModelSource, version: int) -> Loaded:
        config = source.build_config(*SIGNATURE)
        self.loads.append((version, config.max_batch_size))
        return Loaded(config)

    def max_batch_size(self) -> int:
        return self.registry.get("m").config.max_batch_size


async def test_a_load_with_an_override_reloads_and_a_load_without_one_returns_to_config_pbtxt(tmp_path: Path):
    server = Server(model_folder(tmp_path, versions=(1, 2)))
    await server.registry.load("m")
    assert server.loads == [(2, 4)]
    await server.registry.load("m", config='{"max_batch_size": 8}')  # the files are unchanged: loaded again
    await server.registry.load("m", config='{"max_batch_size": 8}')  # the same override: nothing new to load
    assert server.loads == [(2, 4), (2, 8)] and server.max_batch_size() == 8
    await server.registry.load("m", config='{"version_policy": {"all": {}}, "max_batch_size": 2}')
    assert sorted(server.registry.ready_servables("m")) == [1, 2] and server.max_batch_size() == 2
    await server.registry.load("m")
    assert sorted(server.registry.ready_servables("m")) == [2] and server.max_batch_size() == 4
    assert server.loads[-1] == (2, 4)


async def test_a_refused_override_changes_nothing_and_a_failing_one_leaves_the_model_serving(tmp_path: Path):
    server = Server(model_folder(tmp_path))
    await server.registry.load("m")
    before = server.registry.index()
    with pytest.raises(ConfigError):
        await server.registry.load("m", config='{"name": "n"}')
    assert server.registry.index() == before and server.loads == [(1, 4)]
    with pytest.raises(ConfigError) as err:  # refused by build_config while version 1 loads
        await server.registry.load("m", config='{"max_batch_size": -2}')
    assert err.value.message.startswith("model 'm' did not load with its config override: version 1: serving the "
                                        "copy loaded earlier; reloading it failed: config override of model 'm'")
    assert server.max_batch_size() == 4 and server.registry.is_ready("m")
    await server.registry.load("m")  # config.pbtxt again: the failure is gone
    assert [(e.version, e.state.value, e.reason) for e in server.registry.index()] == [("1", "READY", "")]


async def test_an_override_that_fails_for_a_model_not_loaded_is_invalid_argument(tmp_path: Path):
    server = Server(model_folder(tmp_path))
    with pytest.raises(ConfigError) as err:
        await server.registry.load("m", config='{"max_batch_size": -2}')
    assert err.value.message.startswith("model 'm' did not load with its config override: version 1 UNAVAILABLE: "
                                        "config override of model 'm'")
    await server.registry.load("m")
    assert server.max_batch_size() == 4

"""Scheduling options of a model config: priority levels, queue policies, the latency objective."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from model_store.complete import ModelTensor, build_config
from model_store.config import DynamicBatching, LatencySlo, ModelConfig, ModelQueuePolicy, TimeoutAction
from model_store.pbtxt import parse_config_text, stated_fields
from ops.errors import ConfigError

SOURCE = "repo/m/config.pbtxt"
INPUTS = [ModelTensor("INPUT0", np.dtype(np.float32), (None, 4))]
OUTPUTS = [ModelTensor("OUTPUT0", np.dtype(np.float32), (None, 4))]


def build(text: str) -> ModelConfig:
    return build_config("m", parse_config_text(text, SOURCE), INPUTS, OUTPUTS, SOURCE, stated=stated_fields(text))


def slo(ms: str, percentile: str | None = None) -> str:
    text = f'parameters {{ key: "latency_slo_ms" value {{ string_value: "{ms}" }} }}\n'
    if percentile is not None:
        text += f'parameters {{ key: "latency_slo_percentile" value {{ string_value: "{percentile}" }} }}\n'
    return text


def test_priority_levels_and_queue_policies_are_read_and_written_back():
    config = build(
        """
        max_batch_size: 8
        dynamic_batching {
          priority_levels: 3
          default_priority_level: 2
          default_queue_policy { max_queue_size: 10 default_timeout_microseconds: 5000 timeout_action: DELAY }
          priority_queue_policy {
            key: 1
            value { max_queue_size: 4 default_timeout_microseconds: 1000 allow_timeout_override: true }
          }
        }
        parameters { key: "priority_aging_ms" value { string_value: "250" } }
        """
    )
    db = config.dynamic_batching
    assert db == DynamicBatching(
        max_queue_delay_us=0,
        priority_levels=3,
        default_priority_level=2,
        default_queue_policy=ModelQueuePolicy(10, 5000, TimeoutAction.DELAY, False),
        priority_queue_policy={1: ModelQueuePolicy(4, 1000, TimeoutAction.REJECT, True)},
        priority_aging_ms=250.0,
    )
    assert db.queue_policy(1).max_queue_size == 4
    assert db.queue_policy(3) == db.default_queue_policy
    proto = config.to_proto().dynamic_batching
    assert (proto.priority_levels, proto.default_priority_level) == (3, 2)
    assert proto.default_queue_policy.timeout_action == proto.default_queue_policy.DELAY
    assert proto.priority_queue_policy[1].allow_timeout_override is True


@pytest.mark.parametrize(
    "text, expected",
    [
        ("max_batch_size: 8\ndynamic_batching { }\n" + slo("25"), LatencySlo(25.0, 99.0)),
        ("max_batch_size: 8\ndynamic_batching { }\n" + slo("7.5", "95"), LatencySlo(7.5, 95.0)),
        (slo("25"), LatencySlo(25.0, 99.0)),  # batching completed from the model: dynamic batching on
    ],
)
def test_latency_objective_is_read_from_parameters(text, expected):
    config = build(text)
    assert config.dynamic_batching is not None
    assert config.dynamic_batching.latency_slo == expected
    assert config.parameters["latency_slo_ms"]  # still visible as a model parameter


def test_a_completed_latency_objective_reads_back_from_the_reported_config():
    config = build(slo("25"))  # batching completed from the model: its queue delay is the objective's

    reported = text_format.MessageToString(config.to_proto())

    assert config.dynamic_batching.max_queue_delay_us == 0
    assert build(reported) == config


@pytest.mark.parametrize(
    "text, fragments",
    [
        pytest.param(
            "max_batch_size: 8\ndynamic_batching { priority_levels: 2 default_priority_level: 3 }",
            ["dynamic_batching.default_priority_level:", "is 3; with priority_levels 2 it must be a level in 1..2"],
            id="default-level-outside",
        ),
        pytest.param(
            "max_batch_size: 8\ndynamic_batching { default_priority_level: 1 }",
            ["dynamic_batching.default_priority_level:", "priority_levels is 0"],
            id="default-level-without-levels",
        ),
        pytest.param(
            "max_batch_size: 8\ndynamic_batching { priority_levels: 2 default_priority_level: 1 "
            "priority_queue_policy { key: 5 value { } } }",
            ["dynamic_batching.priority_queue_policy:", "levels [5], outside 1..2"],
            id="policy-for-unknown-level",
        ),
        pytest.param(
            "max_batch_size: 8\ndynamic_batching { priority_queue_policy { key: 1 value { } } }",
            ["dynamic_batching.priority_queue_policy:", "priority_levels is 0"],
            id="policy-without-levels",
        ),
        pytest.param(
            "max_batch_size: 8\ndynamic_batching { priority_levels: 1000 default_priority_level: 1 }",
            ["dynamic_batching.priority_levels:", "at most 64"],
            id="too-many-levels",
        ),
        pytest.param(
            "max_batch_size: 8\ndynamic_batching { }\n" + slo("fast"),
            ["parameters.latency_slo_ms:", 'is "fast"; give milliseconds > 0'],
            id="slo-not-a-number",
        ),
        pytest.param(
            "max_batch_size: 8\ndynamic_batching { }\n" + slo("0"),
            ["parameters.latency_slo_ms:", "milliseconds > 0"],
            id="slo-zero",
        ),
        pytest.param(
            "max_batch_size: 8\ndynamic_batching { }\n" + slo("25", "100"),
            ["parameters.latency_slo_percentile:", "in (0, 100)"],
            id="percentile-100",
        ),
        pytest.param(
            'max_batch_size: 8\ndynamic_batching { }\nparameters { key: "latency_slo_percentile" '
            'value { string_value: "99" } }',
            ["parameters.latency_slo_percentile:", "without latency_slo_ms"],
            id="percentile-alone",
        ),
        pytest.param(
            "max_batch_size: 8\n" + slo("25"),
            ["parameters.latency_slo_ms:", "needs dynamic batching; add `dynamic_batching { }`"],
            id="slo-without-dynamic-batching",
        ),
        pytest.param(
            "max_batch_size: 0\n" + slo("25"),
            ["parameters.latency_slo_ms:", "needs a batching model (max_batch_size > 0)"],
            id="slo-on-a-model-that-does-not-batch",
        ),
        pytest.param(
            "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n" + slo("25"),
            ["dynamic_batching.max_queue_delay_microseconds:", "latency_slo_ms is set and decides how long"],
            id="slo-and-fixed-delay",
        ),
        pytest.param(
            "max_batch_size: 8\ndynamic_batching { preferred_batch_size: [ 4 ] }\n" + slo("25"),
            ["dynamic_batching.preferred_batch_size:", "latency_slo_ms is set and chooses batch sizes"],
            id="slo-and-preferred-sizes",
        ),
        pytest.param(
            'max_batch_size: 8\ndynamic_batching { }\nparameters { key: "priority_aging_ms" '
            'value { string_value: "-5" } }',
            ["parameters.priority_aging_ms:", "milliseconds >= 0"],
            id="negative-aging",
        ),
    ],
)
def test_scheduling_errors_name_the_file_and_field_and_say_what_to_do(text, fragments):
    with pytest.raises(ConfigError) as caught:
        build(text)
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: ")
    for fragment in fragments:
        assert fragment in message

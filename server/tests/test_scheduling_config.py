"""ModelConfig -> BatcherConfig: each model gets exactly its own scheduling slice."""

from __future__ import annotations

import numpy as np
import pytest

from batching.queues import QueuePolicy, TimeoutAction
from model_store.complete import ModelTensor, build_config
from model_store.pbtxt import parse_config_text, stated_fields
from server.scheduling import batcher_config

SIGNATURE = ([ModelTensor("INPUT0", np.dtype(np.float32), (None, 4))],
             [ModelTensor("OUTPUT0", np.dtype(np.float32), (None, 4))])


def config_of(text: str):
    message = parse_config_text(text, "config.pbtxt")
    return build_config("m", message, *SIGNATURE, "config.pbtxt", stated=stated_fields(text))


def test_priority_levels_with_their_policies_and_the_server_default_bound():
    bc = batcher_config(config_of("""
        max_batch_size: 16
        dynamic_batching {
          max_queue_delay_microseconds: 2000
          preferred_batch_size: [ 8 ]
          preserve_ordering: true
          priority_levels: 3
          default_priority_level: 3
          default_queue_policy { default_timeout_microseconds: 5000 timeout_action: DELAY }
          priority_queue_policy { key: 1 value { max_queue_size: 7 allow_timeout_override: true } }
        }
        instance_group [ { count: 2 kind: KIND_CPU } ]
        parameters { key: "priority_aging_ms" value { string_value: "0" } }
    """), default_max_queue_size=99)
    assert (bc.policy.max_batch_size, bc.policy.max_queue_delay_s, bc.policy.preferred_batch_sizes) == (16, 0.002, (8,))
    assert bc.levels == (
        QueuePolicy(max_queue_size=7, allow_timeout_override=True),
        QueuePolicy(max_queue_size=99, timeout_s=0.005, timeout_action=TimeoutAction.DELAY),
        QueuePolicy(max_queue_size=99, timeout_s=0.005, timeout_action=TimeoutAction.DELAY),
    )
    assert (bc.default_priority, bc.aging_s, bc.preserve_ordering, bc.max_concurrent_batches) == (3, 0.0, True, 2)
    assert bc.objective is None


def test_a_latency_objective_replaces_the_fixed_delay():
    bc = batcher_config(config_of("""
        max_batch_size: 32
        dynamic_batching { }
        parameters { key: "latency_slo_ms" value { string_value: "25" } }
        parameters { key: "latency_slo_percentile" value { string_value: "95" } }
    """), default_max_queue_size=1024)
    assert bc.objective is not None
    assert (bc.objective.latency_s, bc.objective.percentile) == (pytest.approx(0.025), 95.0)
    assert (bc.policy.max_batch_size, bc.policy.max_queue_delay_s) == (32, 0.0)
    assert bc.levels == (QueuePolicy(max_queue_size=1024),)


@pytest.mark.parametrize("text", ["max_batch_size: 0", "max_batch_size: 8"])
def test_a_model_without_dynamic_batching_runs_one_request_per_batch(text):
    bc = batcher_config(config_of(text), default_max_queue_size=5)
    assert (bc.policy.max_batch_size, bc.max_queue_size, bc.levels, bc.objective) == (1, 5, (), None)

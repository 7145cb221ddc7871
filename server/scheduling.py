"""A model's scheduling slice: ``ModelConfig`` (model_store) -> ``BatcherConfig`` (batching).

The composition step that hands the batcher only its own configuration: row
limits, delay and preferred sizes, one queue policy per priority level (with
the server's default bound where the model sets none), the anti-starvation
bound, ordering and the latency objective. The servable reports each batch's
compute time to the batcher (``record_run_time``), so the batcher does not
time batches itself. Pure; transport-free.
"""

from __future__ import annotations

from batching.config import BatcherConfig
from batching.policy import BatchPolicy
from batching.queues import QueuePolicy, TimeoutAction
from batching.slo import LatencyObjective
from model_store.config import ModelConfig, ModelQueuePolicy


def batcher_config(config: ModelConfig, default_max_queue_size: int, instances: int | None = None) -> BatcherConfig:
    """The batcher's configuration for ``config``; ``default_max_queue_size`` bounds levels that set no size.

    ``instances``: the batches that may run at once, the loaded kernel's instance count (with a GPU
    provider a group that lists no GPUs has ``count`` on each visible GPU); default: the config's count
    where the CPU runs it.

    A model that does not batch (``max_batch_size`` 0 or no dynamic_batching)
    runs one request per batch, on one priority level with no timeouts.
    """
    db = config.batching  # dynamic_batching's, or the sequence batcher's delay and preferred sizes
    instances = max(1, config.instance_count if instances is None else instances)
    if config.max_batch_size <= 0 or db is None:
        return BatcherConfig(
            policy=BatchPolicy(max_batch_size=1),
            max_queue_size=default_max_queue_size,
            max_concurrent_batches=instances,
            measure_run_time=False,
        )
    slo = db.latency_slo
    policy = BatchPolicy(
        max_batch_size=config.max_batch_size,
        max_queue_delay_s=0.0 if slo else db.max_queue_delay_us / 1e6,
        preferred_batch_sizes=() if slo else tuple(db.preferred_batch_size),
    )
    levels = tuple(_level(db.queue_policy(level), default_max_queue_size) for level in range(1, max(db.priority_levels, 1) + 1))
    return BatcherConfig(
        policy=policy,
        max_queue_size=default_max_queue_size,
        max_concurrent_batches=instances,
        levels=levels,
        default_priority=db.default_priority_level or 1,
        aging_s=db.priority_aging_ms / 1e3,
        preserve_ordering=db.preserve_ordering,
        objective=LatencyObjective(slo.latency_ms / 1e3, slo.percentile) if slo else None,
        measure_run_time=False,
    )


def _level(policy: ModelQueuePolicy, default_max_queue_size: int) -> QueuePolicy:
    return QueuePolicy(
        max_queue_size=policy.max_queue_size or default_max_queue_size,
        timeout_s=policy.default_timeout_us / 1e6,
        timeout_action=TimeoutAction(policy.timeout_action.value),
        allow_timeout_override=policy.allow_timeout_override,
    )

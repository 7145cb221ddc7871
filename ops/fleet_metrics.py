"""Metrics of a fleet replica (``--redis-url``): the Redis link, the response cache, rate limits, rollouts.

Built only in fleet mode, on the server's ``CollectorRegistry``, next to ``ServerMetrics``; a
standalone server exports none of these families. Recording follows ops/metrics.py: plain ints and
``Histogram`` bucket arrays on loop-bound handles, turned into families only when scraped; gauges
are read from callbacks at scrape time. Labels stay low-cardinality: model, version, tier, result,
and the tenant only for tenants an operator gave a limit (``fleetserve fleet limit``).

Imports nothing from fleetserve but ``ops.metrics`` (and through it ``ops.errors``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ops.histograms import Histogram, MetricsConfig

log = logging.getLogger(__name__)

_NS = 1_000_000_000
CACHE_TIERS = ("local", "redis", "inflight")  # where a hit came from; inflight: joined an identical request
CACHE_OPS = ("get", "set")


@dataclass(frozen=True)
class RolloutGauge:
    """One model's rollout state on this replica, as the gauges report it."""

    model: str
    desired_revision: int
    applied_revision: int
    failed: bool


class CacheMetrics:
    """The response-cache recording handle of one model version. Loop-bound."""

    __slots__ = ("model", "version", "hits", "misses", "errors", "lookup")

    def __init__(self, model: str, version: str, config: MetricsConfig) -> None:
        self.model = model
        self.version = version
        self.hits = [0] * len(CACHE_TIERS)  # by CACHE_TIERS index
        self.misses = 0
        self.errors = [0] * len(CACHE_OPS)  # Redis could not be used for a get / a set
        self.lookup = Histogram(config.latency_buckets_s, _NS)


class FleetMetrics:
    """See the module docstring. ``observe`` connects the scrape-time gauges."""

    def __init__(self, registry: CollectorRegistry, config: MetricsConfig | None = None) -> None:
        self.config = config or MetricsConfig()
        self._cache: dict[tuple[str, str], CacheMetrics] = {}
        self._limited: dict[tuple[str, str], int] = {}  # (model, tenant) -> requests refused
        self.leases = {"granted": 0, "empty": 0, "unavailable": 0}
        self.sequence_forwards: dict[str, int] = {}  # by model (server/sequence_owners.py)
        self.sequence_record_errors = 0
        self._redis_up: Callable[[], bool] = lambda: False
        self._transitions: Callable[[], dict[str, int]] = dict
        self._replicas: Callable[[], int] = lambda: 0
        self._rollouts: Callable[[], Iterable[RolloutGauge]] = tuple
        self._local_cache: Callable[[], tuple[int, int]] = lambda: (0, 0)
        registry.register(_Collector(self))

    def observe(
        self, *, redis_up: Callable[[], bool], transitions: Callable[[], dict[str, int]], replicas: Callable[[], int],
        rollouts: Callable[[], Iterable[RolloutGauge]], local_cache: Callable[[], tuple[int, int]],
    ) -> None:
        """Scrape-time gauges: link state and transition counts, live replicas last seen, rollout state per model,
        and the local cache tier's (entries, bytes)."""
        self._redis_up, self._transitions, self._replicas = redis_up, transitions, replicas
        self._rollouts, self._local_cache = rollouts, local_cache

    # ---- recording (hot path) ---------------------------------------------------------------
    def cache(self, model: str, version: str) -> CacheMetrics:
        handle = self._cache.get((model, version))
        if handle is None:
            handle = self._cache[(model, version)] = CacheMetrics(model, version, self.config)
        return handle

    def record_rate_limited(self, model: str, tenant: str) -> None:
        key = (model, tenant)
        self._limited[key] = self._limited.get(key, 0) + 1

    # ---- export -----------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("fleetserve_redis_up", "1 while this replica's Redis link is up, else 0",
                                value=1.0 if self._redis_up() else 0.0)
        transitions = CounterMetricFamily("fleetserve_redis_transitions", "Redis link state changes, by new state",
                                          labels=["state"])
        for state, count in sorted(self._transitions().items()):
            transitions.add_metric([state], count)
        yield transitions
        yield GaugeMetricFamily("fleetserve_fleet_replicas", "Live replicas in the fleet, as last seen in Redis",
                                value=self._replicas())
        yield from self._cache_families()
        limited = CounterMetricFamily("fleetserve_rate_limited_requests",
                                      "Requests refused by a tenant's rate limit", labels=["model", "tenant"])
        for (model, tenant), count in list(self._limited.items()):
            limited.add_metric([model, tenant], count)
        yield limited
        leases = CounterMetricFamily("fleetserve_rate_limit_leases",
                                     "Token lease requests to Redis by result (granted, empty bucket, Redis unavailable)",
                                     labels=["result"])
        for result, count in list(self.leases.items()):
            leases.add_metric([result], count)
        yield leases
        yield from self._rollout_families()
        forwarded = CounterMetricFamily("fleetserve_sequence_forwarded_requests",
                                        "Requests of a sequence another replica holds, forwarded to it", labels=["model"])
        for model, count in list(self.sequence_forwards.items()):
            forwarded.add_metric([model], count)
        yield forwarded
        yield CounterMetricFamily("fleetserve_sequence_record_errors",
                                  "Writes of which replica holds a sequence that Redis did not take (down, slow, or "
                                  "too many pending)", value=self.sequence_record_errors)

    def _cache_families(self) -> Iterator[Metric]:
        hits = CounterMetricFamily("fleetserve_response_cache_hits", "Response cache hits by tier",
                                   labels=["model", "version", "tier"])
        misses = CounterMetricFamily("fleetserve_response_cache_misses",
                                     "Response cache misses (the request was computed)", labels=["model", "version"])
        errors = CounterMetricFamily("fleetserve_response_cache_errors",
                                     "Response cache operations that went on without Redis (down, slow or failing)",
                                     labels=["model", "version", "op"])
        lookup = HistogramMetricFamily("fleetserve_response_cache_lookup_duration_seconds",
                                       "Time to decide hit or miss (local tier, then Redis)", labels=["model", "version"])
        for h in list(self._cache.values()):
            labels = [h.model, h.version]
            for tier, count in zip(CACHE_TIERS, h.hits[:]):
                hits.add_metric([*labels, tier], count)
            misses.add_metric(labels, h.misses)
            for op, count in zip(CACHE_OPS, h.errors[:]):
                errors.add_metric([*labels, op], count)
            h.lookup.export(lookup, labels)
        entries, size = self._local_cache()
        yield from (hits, misses, errors, lookup)
        yield GaugeMetricFamily("fleetserve_response_cache_local_entries", "Entries in the in-process cache tier",
                                value=entries)
        yield GaugeMetricFamily("fleetserve_response_cache_local_bytes", "Tensor bytes held by the in-process cache tier",
                                value=size)

    def _rollout_families(self) -> Iterator[Metric]:
        desired = GaugeMetricFamily("fleetserve_rollout_desired_revision",
                                    "The latest desired-state revision this replica has seen, per model", labels=["model"])
        applied = GaugeMetricFamily("fleetserve_rollout_applied_revision",
                                    "The desired-state revision this replica serves, per model", labels=["model"])
        failed = GaugeMetricFamily("fleetserve_rollout_failed",
                                   "1 while this replica cannot apply the desired state of a model (it serves the "
                                   "previous one)", labels=["model"])
        try:
            rows = list(self._rollouts())
        except Exception:
            log.warning("cannot read rollout state for metrics", exc_info=True)
            rows = []
        for row in rows:
            desired.add_metric([row.model], row.desired_revision)
            applied.add_metric([row.model], row.applied_revision)
            failed.add_metric([row.model], 1.0 if row.failed else 0.0)
        yield from (desired, applied, failed)


class _Collector(Collector):
    def __init__(self, metrics: FleetMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics.collect()

    def describe(self) -> Iterable[Metric]:
        return [Metric(name, "", kind) for name, kind in FLEET_FAMILIES]


# Every family FleetMetrics exports (fleet mode only; README "Fleet metrics" lists them).
FLEET_FAMILIES: tuple[tuple[str, str], ...] = (
    ("fleetserve_redis_up", "gauge"),
    ("fleetserve_redis_transitions", "counter"),
    ("fleetserve_fleet_replicas", "gauge"),
    ("fleetserve_response_cache_hits", "counter"),
    ("fleetserve_response_cache_misses", "counter"),
    ("fleetserve_response_cache_errors", "counter"),
    ("fleetserve_response_cache_lookup_duration_seconds", "histogram"),
    ("fleetserve_response_cache_local_entries", "gauge"),
    ("fleetserve_response_cache_local_bytes", "gauge"),
    ("fleetserve_rate_limited_requests", "counter"),
    ("fleetserve_rate_limit_leases", "counter"),
    ("fleetserve_rollout_desired_revision", "gauge"),
    ("fleetserve_rollout_applied_revision", "gauge"),
    ("fleetserve_rollout_failed", "gauge"),
    ("fleetserve_sequence_forwarded_requests", "counter"),
    ("fleetserve_sequence_record_errors", "counter"),
)

"""Requests refused by a restricted API (server/restrictions.py): they reach no model, so the inference
counters never see them; this counter does, by transport and category, so a client whose key went stale
(a rotated secret, a new service) shows up. Registered only when an API is restricted.

Imports nothing from fleetserve.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

ACCESS_FAMILIES: tuple[tuple[str, str], ...] = (("fleetserve_restricted_requests_refused", "counter"),)


class RefusedRequests(Collector):
    """``refuse(transport, category)`` counts one; loop-bound (the transports call it from the event loop)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        registry.register(self)

    def refuse(self, transport: str, category: str) -> None:
        key = (transport, category)
        self._counts[key] = self._counts.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            ACCESS_FAMILIES[0][0], "Requests to a restricted API refused for lacking its header (never read)",
            labels=["transport", "category"])
        for (transport, category), count in sorted(dict(self._counts).items()):
            family.add_metric([transport, category], count)
        yield family

    def describe(self) -> Iterable[Metric]:
        return [Metric(name, "", kind) for name, kind in ACCESS_FAMILIES]

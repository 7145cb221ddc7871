"""What a fleetserve under load saw itself: request durations within an objective, and its scheduler's estimate.

A benchmark judges latency at the client; when the client's view misses an objective, this tells
the scheduler's misses (the server's own request-duration histogram, read over ``/metrics``) from
what the transport and the load generator added, and keeps the scheduler's DEBUG estimate line.
Talks to the server only over HTTP and through its log; imports nothing of the server.
"""

from __future__ import annotations

import asyncio
import math
import re

from loadtest.servers import ServedProcess

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_METRICS_PORT = re.compile(r"metrics listening on \S+:(\d+)")
_HISTOGRAM = "fleetserve_request_duration_seconds"  # successful requests, inside the server

Counts = dict[str, tuple[float, float]]  # model -> (successful requests within the objective, all successful)


def server_buckets(objective_ms: float) -> str:
    """A ``--metrics-latency-buckets`` value with a bound at the objective, so the share within it is exact."""
    return ",".join(f"{b:g}" for b in sorted({*_LATENCY_BUCKETS_S, objective_ms / 1e3}))


class ServerView:
    """Reads ``server``'s metrics (started with ``server_buckets(objective_ms)``) and log. One event loop."""

    def __init__(self, server: ServedProcess, objective_ms: float) -> None:
        self.server = server
        self.objective_s = objective_ms / 1e3
        ports = [m.group(1) for line in list(server.lines) if (m := _METRICS_PORT.search(line))]
        self.url = f"http://127.0.0.1:{ports[0]}/metrics" if ports else None

    async def counts(self, after_s: float = 0.0) -> Counts:
        """Cumulative counts per model, read ``after_s`` from now; {} when the metrics cannot be read."""
        await asyncio.sleep(after_s)
        try:
            return await asyncio.to_thread(self._counts)
        except OSError:
            return {}

    def _counts(self) -> Counts:
        from urllib.request import urlopen

        from prometheus_client.parser import text_string_to_metric_families

        if self.url is None:
            return {}
        with urlopen(self.url, timeout=10) as reply:
            text = reply.read().decode()
        within: dict[str, float] = {}
        total: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name != _HISTOGRAM:
                continue
            for sample in family.samples:
                model = sample.labels.get("model", "")
                if sample.name.endswith("_bucket") and math.isclose(float(sample.labels["le"]), self.objective_s):
                    within[model] = within.get(model, 0.0) + sample.value
                elif sample.name.endswith("_count"):
                    total[model] = total.get(model, 0.0) + sample.value
        return {model: (within.get(model, 0.0), count) for model, count in total.items()}

    @staticmethod
    def share(model: str, before: Counts, after: Counts) -> float | None:
        """The share of ``model``'s successful requests between two readings that met the objective (None: none)."""
        if model not in after:
            return None
        within0, total0 = before.get(model, (0.0, 0.0))
        within1, total1 = after[model]
        return (within1 - within0) / (total1 - total0) if total1 > total0 else None

    def last_estimate(self, model: str) -> str:
        """The last estimate the batcher of ``model`` logged at DEBUG (at most one a second), or ""."""
        pattern = re.compile(rf"model '{re.escape(model)}' version \d+: (batch run time .*)")
        found = [m.group(1) for line in list(self.server.lines) if (m := pattern.search(line))]
        return found[-1].strip() if found else ""

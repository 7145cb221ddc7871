"""Results of a load test as dataclasses, and their JSON form (the file ``plan`` and ``--compare`` read).

``LoadtestResult`` is one run: how it was driven (targets, model, transport, seed, windows) and one
``PointResult`` per load level of the sweep. ``to_dict``/``from_dict`` round-trip exactly;
``from_dict`` rejects unknown or missing fields with the field named.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.stats import LatencyMs

SCHEMA_VERSION = 1


@dataclass
class PointResult:
    """One load level, measured over the accepted windows (warm-up excluded)."""

    mode: str  # "concurrency" (closed loop) or "rate" (open loop, Poisson arrivals)
    level: float  # concurrency, or offered requests/s
    duration_s: float  # length of the measured windows together
    requests: int  # completed in the measured windows, successful or not
    ok: int
    throughput_rps: float  # successful responses per second
    rows_per_s: float
    latency_ms: LatencyMs  # of successful requests; open loop: from the scheduled send time
    errors: dict[str, int]  # failed requests by status name
    error_rate: float  # failed / completed
    goodput_rps: float | None  # successful within the SLO, per second (None without --slo-ms)
    stable: bool  # the last windows agreed within the tolerance before the time bound
    window_rps: list[float]  # throughput of every window after warm-up, in order
    measured_windows: int  # how many of the last windows were measured
    batch_sizes: dict[int, int]  # server executions by batch size (ModelStatistics delta), {} if unknown
    mean_batch_size: float | None  # rows per server execution over the same interval
    loadgen_cpu_cores: float  # CPU the load generator used, in cores (all its processes)
    loadgen_busiest_process: float  # busiest load-generator process, fraction of one core
    send_lag_p99_ms: float | None  # open loop: how late sends left against the schedule
    dropped: int = 0  # open loop: arrivals never sent because the in-flight cap was reached
    unmatched_responses: int = 0  # stream responses whose id matched no request in flight
    # Open loop: successful requests *scheduled* in the measured windows, whenever they completed
    # (before the point ended). Loads with the same seed and point index have the same arrivals, so
    # this compares schedules on the same requests, free of which completions land inside a window.
    ok_of_arrivals: int | None = None

    @property
    def label(self) -> str:
        return f"c={self.level:g}" if self.mode == "concurrency" else f"{self.level:g}/s"


@dataclass
class LoadtestResult:
    """One run of ``fleetserve loadtest``: its settings, seed and one result per load level."""

    label: str
    created_utc: str
    command: list[str]
    targets: list[str]
    model: str
    model_version: str
    transport: str  # "unary" (ModelInfer) or "stream" (ModelStreamInfer)
    rows_per_request: int
    seed: int
    slo_ms: float | None
    processes: int
    streams: int
    warmup_s: float
    window_s: float
    stable_windows: int
    tolerance: float
    max_duration_s: float
    max_requests: int
    host_cpu_count: int
    points: list[PointResult] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # what each request carried: "INPUT0 FP32 [1,16] random normal"
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for point in data["points"]:
            point["batch_sizes"] = {str(k): v for k, v in point["batch_sizes"].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoadtestResult":
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"unsupported result schema {data.get('schema')!r}; expected {SCHEMA_VERSION}")
        values = _fields(cls, data, "result")
        points = []
        for i, raw in enumerate(values["points"]):
            p = _fields(PointResult, raw, f"points[{i}]")
            p["latency_ms"] = LatencyMs(**_fields(LatencyMs, p["latency_ms"], f"points[{i}].latency_ms"))
            p["batch_sizes"] = {int(k): int(v) for k, v in p["batch_sizes"].items()}
            points.append(PointResult(**p))
        values["points"] = points
        return cls(**values)

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> "LoadtestResult":
        """Read a result file; raises ValueError naming the file when it is not one."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{path}: not a loadtest result: {exc}") from exc


def _fields(cls: type, data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    required = {n for n, f in known.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    return dict(data)

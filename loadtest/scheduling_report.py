"""The pure parts of ``fleetserve bench-scheduling``: schedules, model configs, cells, targets, the table.

No I/O and no servers: ``loadtest/bench_scheduling.py`` measures, this module turns configuration
into ``config.pbtxt`` text and measurements into ``Cell`` rows, issue 3's targets and the printed
report. Imports nothing of the server.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Sequence

from loadtest.targets import Target
from loadtest.results import PointResult

RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"  # shed: a full queue, or predicted to miss the objective
CLIENT_DROPPED = "CLIENT_DROPPED"  # never sent: the load generator's in-flight cap was reached
ADMITTED_WITHIN = 0.99  # issue 3: share of admitted requests within the objective, at every load


@dataclass(frozen=True)
class Schedule:
    """One way of serving the model; ``name`` is its model name in the repository and its row in the table.

    ``kind``: "none" (``max_batch_size`` but no ``dynamic_batching``: each request runs alone),
    "fixed" (Triton's ``max_queue_delay_microseconds`` = ``delay_us``) or "slo" (``latency_slo_ms``).
    """

    name: str
    kind: str
    delay_us: int = 0


@dataclass(frozen=True)
class Load:
    name: str
    fraction: float  # offered rate as a fraction of the measured capacity


NEAR_CAPACITY = Load("near capacity", 0.9)  # where SLO mode must serve what the best fixed delay serves
LOADS: tuple[Load, ...] = (Load("light", 0.3), NEAR_CAPACITY, Load("2x over", 2.0))


def schedules(delays_us: Sequence[int]) -> list[Schedule]:
    """No batching, one fixed-delay schedule per delay, and SLO mode, in that order."""
    if not delays_us or any(d <= 0 for d in delays_us) or len(set(delays_us)) != len(delays_us):
        raise ValueError(f"fixed delays must be distinct positive microseconds, got {list(delays_us)}")
    return [Schedule("no_batching", "none"), *(Schedule(f"fixed_{_delay(d)}", "fixed", d) for d in delays_us),
            Schedule("slo", "slo")]


def _delay(us: int) -> str:
    return f"{us // 1000}ms" if us % 1000 == 0 else f"{us}us"  # model names: letters, digits, underscores


def model_config(schedule: Schedule, max_batch_size: int, objective_ms: float, threads: int) -> str:
    """The ``config.pbtxt`` of ``schedule``: same model, same batch limit and threads, only the scheduling differs."""
    lines = [f"max_batch_size: {max_batch_size}"]
    if schedule.kind == "fixed":
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {schedule.delay_us} }}")
    elif schedule.kind == "slo":
        lines += ["dynamic_batching { }", _parameter("latency_slo_ms", f"{objective_ms:g}")]
    elif schedule.kind != "none":
        raise ValueError(f"unknown schedule kind {schedule.kind!r}")
    lines.append(_parameter("intra_op_thread_count", str(threads)))
    return "\n".join(lines) + "\n"


def _parameter(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}'


KEPT_UP = 0.97  # open loop at the closed-loop capacity: serving this share of it counts as keeping up


def sustained_capacity(closed_rps: float, open_served_rps: Sequence[float]) -> float:
    """The capacity the loads are fractions of: the closed-loop rate, unless open loop cannot sustain it.

    Closed loop runs full batches back to back with the load generator's cheapest client. Open-loop
    arrivals cost the generator more (a task per request) on the cores it shares with the server, and
    their bursts leave batches part-empty, so the server may sustain less. ``open_served_rps``: what
    each fixed delay served when offered ``closed_rps`` open loop. When they kept up (their mean is at
    least ``KEPT_UP`` of it), the closed-loop rate stands; otherwise that mean is the capacity, so that
    "near capacity" is below what the server sustains, not above it.
    """
    if not open_served_rps:
        return closed_rps
    served = statistics.fmean(open_served_rps)
    return closed_rps if served >= KEPT_UP * closed_rps else served


OBJECTIVE_FACTOR = 5.0  # x the in-process run time of a full batch; see choose_objective_ms


def choose_objective_ms(run_time_ms: dict[int, float], max_batch_size: int, factor: float = OBJECTIVE_FACTOR,
                        step_ms: float = 5.0) -> float:
    """``factor`` x the run time of a full batch, rounded up to ``step_ms``.

    At full load the SLO scheduler plans a request as the batch it waits for, at the mean, plus its
    own, at the p99 run time, within 90% of the objective; anything queued beyond costs one p99 run
    per batch. On a small shared machine a batch in the server runs 1.3-1.5x its in-process time
    (the transport and the load generator share the cores) with a p99 50-100% above the mean, so a
    full batch alone needs about 3.5-4.5x its in-process time; 5x leaves room for about one more
    queued batch. It is an objective the best fixed delay roughly meets near capacity and misses by
    far over capacity, where its queue grows to max_queue_size: the case the objective is for.
    """
    if max_batch_size not in run_time_ms:
        raise ValueError(f"no run time measured at the max batch size {max_batch_size}")
    return math.ceil(factor * run_time_ms[max_batch_size] / step_ms - 1e-9) * step_ms


@dataclass(frozen=True)
class Cell:
    """One schedule at one load, measured over the windows after warm-up."""

    schedule: str
    load: str
    offered_rps: float
    throughput_rps: float  # successful responses per second
    p50_ms: float  # of successful requests, from the scheduled send time
    p99_ms: float
    requests: int  # arrivals answered, refused or dropped in the measured windows
    admitted: int  # requests neither shed (RESOURCE_EXHAUSTED) nor dropped by the client
    within: int  # answered successfully within the objective
    within_of_sent: float  # within / requests
    within_of_admitted: float | None  # within / admitted; None when nothing was admitted
    shed_rate: float  # RESOURCE_EXHAUSTED / requests
    errors: dict[str, int]  # other failures by status (CLIENT_DROPPED included)
    mean_batch_size: float | None
    stable: bool
    point: PointResult = field(repr=False)
    # The server's own view: its successful requests within the objective by its request-duration
    # histogram (inside the server: no transport, no client), from the end of warm-up; None if unread.
    server_within_of_ok: float | None = None
    # Successful responses to the arrivals scheduled in the windows, per second: every schedule gets
    # the same arrivals at a load, so this compares them on the same requests (the target does).
    answered_rps: float | None = None


def cell_from_point(schedule: str, load: str, offered_rps: float, point: PointResult,
                    server_within_of_ok: float | None = None) -> Cell:
    """Summarise a point measured with ``slo_ms`` set to the objective (its goodput counts the requests within)."""
    if point.goodput_rps is None:
        raise ValueError("the point was measured without an objective (slo_ms), so nothing counts as within it")
    shed = point.errors.get(RESOURCE_EXHAUSTED, 0)
    admitted = point.requests - shed - point.errors.get(CLIENT_DROPPED, 0)
    within = round(point.goodput_rps * point.duration_s)
    return Cell(
        schedule=schedule, load=load, offered_rps=offered_rps, throughput_rps=point.throughput_rps,
        p50_ms=point.latency_ms.p50, p99_ms=point.latency_ms.p99, requests=point.requests, admitted=admitted,
        within=within, within_of_sent=within / point.requests if point.requests else 0.0,
        within_of_admitted=within / admitted if admitted > 0 else None,
        shed_rate=shed / point.requests if point.requests else 0.0,
        errors={k: v for k, v in point.errors.items() if k != RESOURCE_EXHAUSTED},
        mean_batch_size=point.mean_batch_size, stable=point.stable, point=point,
        server_within_of_ok=server_within_of_ok,
        answered_rps=point.ok_of_arrivals / point.duration_s if point.ok_of_arrivals is not None else None,
    )


def evaluate_targets(cells: Sequence[Cell], slo: str, fixed: Sequence[str], near: str,
                     objective_ms: float) -> list[Target]:
    """Issue 3's targets: the SLO schedule keeps >= 99% of admitted requests within the objective at every
    load, and near capacity serves at least the throughput of the best fixed-delay schedule."""
    by_key = {(c.schedule, c.load): c for c in cells}
    targets = []
    for cell in (c for c in cells if c.schedule == slo):
        share = cell.within_of_admitted
        targets.append(Target(
            f"{slo} at {cell.load}: admitted within {objective_ms:g} ms", share or 0.0, ADMITTED_WITHIN,
            share is not None and share >= ADMITTED_WITHIN,
            f"{cell.within:,} of {cell.admitted:,}" if share is not None else "nothing admitted",
        ))
    best = max((by_key[(name, near)] for name in fixed), key=_served)
    mine = by_key[(slo, near)]
    ratio = _served(mine) / _served(best) if _served(best) > 0 else 0.0
    same = " of the same arrivals" if mine.answered_rps is not None and best.answered_rps is not None else ""
    targets.append(Target(f"{slo} / best fixed throughput at {near}", ratio, 1.0, ratio >= 1.0,
                          f"{_served(mine):,.1f} vs {best.schedule} {_served(best):,.1f} req/s{same}"))
    return targets


def _served(cell: Cell) -> float:
    """Throughput for the comparison: answers to the windows' arrivals when known, else completions."""
    return cell.answered_rps if cell.answered_rps is not None else cell.throughput_rps


def format_cells(cells: Sequence[Cell]) -> str:
    """The table: one line per (load, schedule), loads in the order measured."""
    header = ["load", "schedule", "offered/s", "req/s", "p50 ms", "p99 ms", "in SLO/sent", "in SLO/admitted",
              "server: in SLO/ok", "shed", "errors", "batch", "stable"]
    rows = [header]
    for c in cells:
        errors = ", ".join(f"{k} {v}" for k, v in c.errors.items()) or "0"
        rows.append([
            c.load, c.schedule, f"{c.offered_rps:,.0f}", f"{c.throughput_rps:,.0f}", f"{c.p50_ms:.1f}",
            f"{c.p99_ms:.1f}", _percent(c.within_of_sent), _percent(c.within_of_admitted),
            _percent(c.server_within_of_ok), _percent(c.shed_rate),
            errors, f"{c.mean_batch_size:.1f}" if c.mean_batch_size is not None else "-", "yes" if c.stable else "NO",
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))).rstrip()
        for r in rows
    )


def format_targets(targets: Sequence[Target]) -> str:
    lines = [f"{'target':<52}{'measured':>9}{'needed':>9}  result"]
    for t in targets:
        share = t.needed < 1  # a share of requests, else a ratio
        measured = f"{t.shown(_percent_places(t.measured), scale=100)}%" if share else t.shown(2)
        needed = f">= {_percent(t.needed) if share else format(t.needed, 'g')}"
        lines.append(f"{t.name:<52}{measured:>9}{needed:>9}  {'PASS' if t.passed else 'FAIL'}  {t.detail}".rstrip())
    return "\n".join(lines)


def _percent(share: float | None) -> str:
    if share is None:
        return "-"
    return f"{share * 100:.{_percent_places(share)}f}%"


def _percent_places(share: float) -> int:
    """One decimal place, two above 99.9% (where 99.95% must not read as 100.0%)."""
    return 1 if share < 0.999 or share == 1 else 2

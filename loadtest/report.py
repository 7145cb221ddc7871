"""Report files and the terminal table of a load test: JSON, CSV, and a latency-throughput PNG.

The plot uses matplotlib's Agg canvas directly (no pyplot global state, no display needed);
matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Sequence

from loadtest.checks import CheckOutcome, format_actual
from loadtest.results import LoadtestResult, PointResult

CSV_COLUMNS = (
    "label", "model", "transport", "rows_per_request", "mode", "level", "throughput_rps", "rows_per_s",
    "p50_ms", "p90_ms", "p99_ms", "p999_ms", "mean_ms", "max_ms", "requests", "ok", "error_rate", "errors",
    "goodput_rps", "slo_ms", "stable", "duration_s", "mean_batch_size", "batch_sizes", "loadgen_cpu_cores",
    "loadgen_busiest_process", "send_lag_p99_ms", "dropped", "unmatched_responses",
)  # fmt: skip


def format_table(result: LoadtestResult) -> str:
    """One line per load level, aligned, with the run's settings above."""
    head = (f"{result.label}: model {result.model!r} over {result.transport}, {result.rows_per_request} row(s)/request, "
            f"targets {', '.join(result.targets)}, seed {result.seed}, {result.processes} load process(es)")
    header = ["load", "req/s", "rows/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "errors"]
    if result.slo_ms is not None:
        header.append(f"goodput@{result.slo_ms:g}ms")
    header += ["batch", "stable", "client cpu"]
    rows = [header]
    for p in result.points:
        lat = p.latency_ms
        errors = ", ".join(f"{k} {v}" for k, v in p.errors.items()) or "0"
        # No successful request: no latency was measured (the result's zeros are not 0 ms).
        latencies = [f"{v:.2f}" if p.ok else "-" for v in (lat.p50, lat.p90, lat.p99, lat.p999)]
        row = [p.label, f"{p.throughput_rps:,.0f}", f"{p.rows_per_s:,.0f}", *latencies, errors]
        if result.slo_ms is not None:
            row.append(f"{p.goodput_rps:,.0f}")
        row += [f"{p.mean_batch_size:.1f}" if p.mean_batch_size is not None else "-", "yes" if p.stable else "NO",
                f"{p.loadgen_cpu_cores:.2f}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))) for r in rows]
    notes = [head]
    if result.inputs:
        notes.append("inputs: " + "; ".join(result.inputs))
    notes += lines
    busy = [p.label for p in result.points if p.loadgen_busiest_process > 0.9]
    if busy:
        notes.append(f"warning: a load-generator process used > 90% of a core at {', '.join(busy)}: "
                     "the client may be the bottleneck; add --processes (on a machine with spare cores)")
    unmatched = [p.label for p in result.points if p.unmatched_responses]
    if unmatched:
        notes.append(f"warning: stream responses matched no request at {', '.join(unmatched)}: "
                     "the server does not echo request ids, so stream latencies cannot be measured")
    # Nearest rank: of fewer than 1,000 latencies the p99.9 is the largest, of fewer than 100 the p99 too.
    few = [f"{p.label} ({p.ok:,}: {'p99 and p99.9 are' if p.ok < 100 else 'p99.9 is'} the slowest)"
           for p in result.points if 0 < p.ok < 1000]
    if few:
        notes.append(f"note: few successful requests at {', '.join(few)}; measure longer for a tail percentile")
    unstable = [p.label for p in result.points if not p.stable]
    if unstable:
        notes.append(f"note: throughput did not settle within --max-duration-s (or --max-requests) at {', '.join(unstable)} "
                     "(all windows after warm-up were measured)")
    return "\n".join(notes)


def format_checks(outcomes: Sequence[CheckOutcome]) -> str:
    return "\n".join(
        f"{'PASS' if o.passed else 'FAIL'}  {o.check.text:<24} at {o.point:<10} actual {format_actual(o.check, o.actual)}"
        for o in outcomes
    )


def write_json(result: LoadtestResult, path: Path) -> Path:
    return result.save(path)


def _csv_row(result: LoadtestResult, p: PointResult) -> dict[str, object]:
    lat = dataclasses.asdict(p.latency_ms)
    return {
        "label": result.label, "model": result.model, "transport": result.transport,
        "rows_per_request": result.rows_per_request, "mode": p.mode, "level": p.level,
        "throughput_rps": round(p.throughput_rps, 3), "rows_per_s": round(p.rows_per_s, 3),
        **{f"{k}_ms": round(v, 4) if p.ok else None for k, v in lat.items()},  # None: no latency was measured
        "requests": p.requests, "ok": p.ok, "error_rate": p.error_rate,
        "errors": ";".join(f"{k}={v}" for k, v in p.errors.items()), "goodput_rps": p.goodput_rps, "slo_ms": result.slo_ms,
        "stable": p.stable,
        "duration_s": p.duration_s, "mean_batch_size": p.mean_batch_size,
        "batch_sizes": ";".join(f"{k}={v}" for k, v in sorted(p.batch_sizes.items())),
        "loadgen_cpu_cores": round(p.loadgen_cpu_cores, 3), "loadgen_busiest_process": round(p.loadgen_busiest_process, 3),
        "send_lag_p99_ms": p.send_lag_p99_ms, "dropped": p.dropped, "unmatched_responses": p.unmatched_responses,
    }


def write_csv(results: Sequence[LoadtestResult], path: Path) -> Path:
    """One row per load level of every result."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for result in results:
            for point in result.points:
                writer.writerow(_csv_row(result, point))
    return path


def plot_latency_throughput(results: Sequence[LoadtestResult], path: Path, title: str = "") -> Path:
    """p50 (solid) and p99 (dashed) latency against throughput, one colour per result, levels annotated."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(8, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, result in enumerate(results):
        colour = f"C{i % 10}"
        points = sorted((p for p in result.points if p.ok), key=lambda p: p.throughput_rps)  # no latency: no point
        x = [p.throughput_rps for p in points]
        ax.plot(x, [p.latency_ms.p50 for p in points], "o-", color=colour, label=f"{result.label} p50")
        ax.plot(x, [p.latency_ms.p99 for p in points], "s--", color=colour, label=f"{result.label} p99")
        for p in points:
            ax.annotate(p.label, (p.throughput_rps, p.latency_ms.p99), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=colour)
    if any(r.slo_ms is not None for r in results):
        slo = min(r.slo_ms for r in results if r.slo_ms is not None)
        ax.axhline(slo, color="grey", linestyle=":", label=f"SLO {slo:g} ms")
    ax.set_xlabel("throughput (successful requests/s)")
    ax.set_ylabel("latency (ms)")
    measured = [p for r in results for p in r.points if p.ok]
    if measured and all(p.latency_ms.p50 > 0 for p in measured):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        # Label only the 2s and 5s between decades, so the axis stays readable.
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:g}"[0] in "25" else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "latency vs throughput")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path

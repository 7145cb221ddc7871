"""The benchmark's pure parts: in-process measurement, target ratios and the table (no servers)."""

import pytest

from loadtest.bench import (
    BATCH_SIZES, BenchLoad, BenchResult, PaLoad, format_bench, inprocess_rows_per_s,
)
from loadtest.bench_targets import evaluate_targets
from loadtest.perf_analyzer import PaResult
from loadtest.soak import soak_verdict
from loadtest.stats import LatencyMs
from loadtest.targets import Target
from model_store.testing import write_mlp_model


def test_inprocess_rate_at_every_batch_size(tmp_path):
    model = write_mlp_model(tmp_path / "m.onnx", sizes=(8, 8, 4))
    rates = inprocess_rows_per_s(model, seconds=0.005, rounds=1)
    assert list(rates) == list(BATCH_SIZES) and all(r > 0 for r in rates.values())


@pytest.fixture
def loads(make_point):
    def load(name, rps, p50=10.0, p99=20.0, rows=1):
        point = make_point(throughput_rps=rps, rows_per_s=rps * rows, latency_ms=LatencyMs(p50, p50, p99, p99, p50, p99))
        return BenchLoad(name, "x", "m", "unary", rows, 64, point)

    return [
        load("bare unary c=64", 5000), load("bare stream c=64", 13000),
        load("tiny unary c=64", 4500), load("tiny stream c=64", 8000),
        load("mlp unary c=64", 4000, p50=10, p99=35), load("mlp stream c=64", 7000),
        load("mlp 64-row unary c=8", 800, rows=64),
    ]


def test_targets_are_ratios_of_this_run(loads):
    targets = {t.name: t for t in evaluate_targets(loads, inprocess_best=60000, rss_mb=250)}
    table = [(round(t.measured, 3), t.passed) for t in targets.values()]
    assert table == [
        (0.9, True),  # 4500 / 5000 >= 0.8
        (0.615, False),  # 8000 / 13000 < 0.7
        (0.889, False),  # 4000 / 4500 >= 0.75, but p99 3.5x p50
        (0.875, True),  # 7000 / 8000, p99 2x p50
        (0.853, True),  # 51,200 rows/s / 60,000
        (250, True),
    ]
    assert targets["mlp unary / tiny unary (c=64), p99 < 3x p50"].detail == "p99/p50 = 3.50"


def test_table_lists_every_load_and_verdict(loads):
    result = BenchResult(
        created_utc="2025-01-01T00:00:00+00:00", cpu_count=2, machine="Linux", quick=True,
        inprocess_rows_per_s={64: 60000.0, 256: 70000.0}, inprocess_best_batch=64, loads=loads,
        server_rss_mb=250.0, server_peak_rss_mb=260.0, targets=evaluate_targets(loads, 60000, 250),
    )
    text = format_bench(result)
    assert "2 cores" in text and "(quick)" in text
    assert "in-process onnxruntime mlp b=64" in text and "above max_batch_size" in text
    assert all(load.name in text for load in loads)
    assert text.count("PASS") == 4 and text.count("FAIL") == 2


def test_perf_analyzers_loads_are_a_second_set_of_targets_and_table(loads):
    def pa_load(name, rows_per_s, p50=10.0, p99=20.0, rows=1):
        result = PaResult(64, rows_per_s, p50, p50, p99, p99, 500.0 if "bare" not in name else None, 100.0)
        return PaLoad(name, "x", "m", "unary", rows, 64, result, server_cpu_us=123.0 if "tiny" in name else None)

    pa_loads = [
        pa_load("bare unary c=64", 6000), pa_load("bare stream c=64", 12000),
        pa_load("tiny unary c=64", 3600), pa_load("tiny stream c=64", 9000),
        pa_load("mlp unary c=64", 3000), pa_load("mlp stream c=64", 6000, p50=10, p99=40),
        pa_load("mlp 64-row unary c=8", 30000, rows=64),
    ]
    assert pa_loads[-1].throughput_rps == pytest.approx(30000 / 64)  # perf_analyzer counts rows
    targets = evaluate_targets(pa_loads, 60000, None, "perf_analyzer")
    assert [(t.name.endswith(", perf_analyzer"), round(t.measured, 3), t.passed) for t in targets] == [
        (True, 0.6, False),  # 3600 / 6000
        (True, 0.75, True),  # 9000 / 12000
        (True, 0.833, True),  # 3000 / 3600
        (True, 0.667, False),  # 6000 / 9000, and p99 4x p50
        (True, 0.5, False),  # 30,000 rows/s / 60,000
    ]
    result = BenchResult(
        created_utc="2025-01-01T00:00:00+00:00", cpu_count=2, machine="Linux", quick=True,
        inprocess_rows_per_s={64: 60000.0}, inprocess_best_batch=64, loads=loads, server_rss_mb=250.0,
        server_peak_rss_mb=260.0, targets=evaluate_targets(loads, 60000, 250) + targets,
        perf_analyzer="Perf Analyzer Version 2.51.0", pa_loads=pa_loads,
    )
    text = format_bench(result)
    assert "driven by Perf Analyzer Version 2.51.0" in text
    section = text.split("driven by")[1].split("target")[0]
    assert section.count("c=64") == 6 and "queue 500 us" in section and " 3,600 " in section
    assert section.count(" 123 ") == 2  # the server's CPU per request, where it was read
    assert text.count("PASS") == 6 and text.count("FAIL") == 5


@pytest.mark.parametrize("measured, needed, decimals, scale, below, shown", [
    (0.79, 0.8, 2, 1, False, "0.79"),  # clear of the threshold: the usual places
    (0.7951, 0.8, 2, 1, False, "0.795"),  # 0.80 would read as met
    (0.99966, 1.0, 2, 1, False, "0.9997"),
    (0.98977, 0.99, 1, 100, False, "98.98"),  # a share printed as a percentage
    (1.0, 1.0, 2, 1, False, "1.00"),
    (0.9999999, 1.0, 2, 1, False, "1.000000"),  # at most 4 places more, then the usual rounding
    (399.996, 400, 2, 1, True, "399.996"),  # a "<" target
])
def test_a_figure_beside_its_verdict_sits_on_the_verdicts_side(measured, needed, decimals, scale, below, shown):
    target = Target("t", measured, needed, (measured < needed) if below else (measured >= needed), "")
    assert target.shown(decimals, scale=scale, below=below) == shown


def test_round_targets_are_the_median_of_each_rounds_ratio(make_point):
    def load(name, rps, round_):
        point = make_point(throughput_rps=rps, rows_per_s=rps, latency_ms=LatencyMs(10, 10, 20, 20, 10, 20))
        return BenchLoad(name, "x", "m", "unary", 1, 64, point, round_)

    loads = [load("mlp 64-row unary c=8", 800, 0)]
    # a slow second round slows both servers: its ratio stays in line, the median ignores the odd one
    for round_, bare, tiny in ((1, 5000, 4500), (2, 2500, 2100), (3, 5200, 2600)):
        loads += [load("bare unary c=64", bare, round_), load("tiny unary c=64", tiny, round_),
                  load("bare stream c=64", 10000, round_), load("tiny stream c=64", 8000, round_),
                  load("mlp unary c=64", 4000, round_), load("mlp stream c=64", 7000, round_)]
    target = evaluate_targets(loads, 60000, None)[0]
    assert target.measured == pytest.approx(0.84)  # ratios 0.90, 0.84, 0.50
    assert target.passed and target.detail == "rounds 0.90, 0.84, 0.50"
    result = BenchResult(
        created_utc="2025-01-01T00:00:00+00:00", cpu_count=2, machine="Linux", quick=False,
        inprocess_rows_per_s={64: 60000.0}, inprocess_best_batch=64, loads=loads, server_rss_mb=None,
        server_peak_rss_mb=None, targets=evaluate_targets(loads, 60000, None),
    )
    text = format_bench(result)
    assert "tiny unary c=64 (median of 3)" in text and " 2,600 " in text  # the median round's row


@pytest.mark.parametrize("samples, peak, growth, passed", [
    ([(10, 150.0), (60, 180.0), (120, 181.0), (300, 184.0)], 190.0, 4.0, True),  # the first minute may fill pools
    ([(10, 150.0), (60, 180.0), (180, 200.0), (300, 230.0)], 235.0, 50.0, False),  # still growing: a leak
    ([(10, 150.0), (60, 380.0), (300, 385.0)], 401.0, 5.0, False),  # flat, but over the 400 MB bound
    ([(10, 150.0), (20, 152.0)], 152.0, 0.0, True),  # shorter than a minute: the last sample alone
])
def test_soak_passes_when_memory_stays_bounded_and_flat_after_a_minute(samples, peak, growth, passed):
    assert soak_verdict(samples, peak) == (pytest.approx(growth), passed)


def test_a_short_soak_against_a_real_server_samples_memory_after_every_load():
    from loadtest.servers import BUNDLED
    from loadtest.soak import SOAK_LOADS, run_soak

    lines: list[str] = []
    result = run_soak(5.0, 1, BUNDLED, say=lines.append, chunk_s=1.0)
    assert result.errors == 0 and result.requests > 100
    assert len(result.rss_mb) == len(lines) >= 2  # one sample per load, the loads in turn
    assert [line.split()[2] for line in lines] == [SOAK_LOADS[i % len(SOAK_LOADS)][0].split()[0]
                                                   for i in range(len(lines))]
    assert 4.0 < result.rss_mb[-1][0] < 15.0  # it ran about the time asked, and stopped by itself
    assert all(0 < mb < 400 for _, mb in result.rss_mb) and result.passed

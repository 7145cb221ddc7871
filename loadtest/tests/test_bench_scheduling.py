"""``fleetserve bench-scheduling``: its pure parts (schedules, configs, cells, targets, table) and a tiny run."""

import json

import pytest

from loadtest.bench_scheduling import BenchSettings, Timing, format_report, run_bench_scheduling, write_json
from loadtest.scheduling_report import (
    LOADS, Schedule, cell_from_point, choose_objective_ms, evaluate_targets, format_cells, format_targets,
    model_config, schedules, sustained_capacity,
)
from loadtest.server_view import server_buckets
from loadtest.stats import LatencyMs
from loadtest.targets import Target
from model_store.pbtxt import parse_config_text


def test_schedules_are_no_batching_each_delay_then_slo():
    plan = schedules((1000, 5000, 250))
    assert [(s.name, s.kind, s.delay_us) for s in plan] == [
        ("no_batching", "none", 0), ("fixed_1ms", "fixed", 1000), ("fixed_5ms", "fixed", 5000),
        ("fixed_250us", "fixed", 250), ("slo", "slo", 0),
    ]
    for bad in ((), (0,), (1000, 1000)):
        with pytest.raises(ValueError, match="distinct positive"):
            schedules(bad)


@pytest.mark.parametrize("closed, served, capacity", [
    (300.0, [], 300.0),  # nothing offered open loop: the closed-loop rate
    (300.0, [300.0, 295.0], 300.0),  # kept up
    (300.0, [292.0, 290.0], 300.0),  # 97%: kept up, within Poisson counting noise
    (300.0, [285.0, 275.0], 280.0),  # fell behind: what they served
    (300.0, [310.0, 240.0], 275.0),  # the mean decides, as for the closed-loop runs
    (300.0, [250.0, 240.0], 245.0),
])
def test_capacity_is_what_open_loop_sustains_at_most_the_closed_loop_rate(closed, served, capacity):
    assert sustained_capacity(closed, served) == pytest.approx(capacity)


@pytest.mark.parametrize("schedule, batching, delay_us, slo", [
    (Schedule("no_batching", "none"), False, None, None),
    (Schedule("fixed_5ms", "fixed", 5000), True, 5000, None),
    (Schedule("slo", "slo"), True, 0, "62.5"),
])
def test_model_configs_differ_only_in_scheduling(schedule, batching, delay_us, slo):
    message = parse_config_text(model_config(schedule, 8, 62.5, 1), "config.pbtxt")
    assert message.max_batch_size == 8
    assert message.parameters["intra_op_thread_count"].string_value == "1"
    assert message.HasField("dynamic_batching") is batching
    if batching:
        assert message.dynamic_batching.max_queue_delay_microseconds == delay_us
    assert ("latency_slo_ms" in message.parameters) is (slo is not None)
    if slo is not None:
        assert message.parameters["latency_slo_ms"].string_value == slo


@pytest.mark.parametrize("run_time_ms, objective_ms", [
    ({1: 10.0, 8: 20.0}, 100.0),  # 5 x 20 ms
    ({1: 10.0, 8: 22.1}, 115.0),  # 110.5 rounded up to 5 ms
    ({1: 0.5, 8: 1.0}, 5.0),
])
def test_objective_is_five_full_batches_rounded_up_to_5_ms(run_time_ms, objective_ms):
    assert choose_objective_ms(run_time_ms, 8) == objective_ms


def test_the_server_gets_a_histogram_bound_at_the_objective():
    assert server_buckets(90) == "0.001,0.0025,0.005,0.01,0.025,0.05,0.09,0.1,0.25,0.5,1,2.5,5,10"
    assert server_buckets(100).count("0.1") == 1


@pytest.fixture
def cell(make_point):
    """A cell from a 4 s point: 1000 requests, 100 shed, 10 dropped, 880 OK of which 870 within the objective."""
    def build(schedule="slo", load="light", ok=880, within=870, shed=100, dropped=10, other=10, **point):
        errors = {k: v for k, v in {"RESOURCE_EXHAUSTED": shed, "CLIENT_DROPPED": dropped, "UNAVAILABLE": other}.items()
                  if v}
        values = dict(mode="rate", level=250.0, requests=ok + shed + dropped + other, ok=ok, throughput_rps=ok / 4,
                      errors=errors, goodput_rps=within / 4, duration_s=4.0,
                      latency_ms=LatencyMs(20.0, 30.0, 60.0, 80.0, 25.0, 90.0))
        return cell_from_point(schedule, load, 250.0, make_point(**{**values, **point}), server_within_of_ok=0.995)

    return build


def test_a_cell_counts_within_of_sent_and_of_admitted(cell):
    c = cell()
    assert (c.requests, c.admitted, c.within) == (1000, 890, 870)  # admitted: neither shed nor dropped
    assert c.within_of_sent == pytest.approx(0.87)
    assert c.within_of_admitted == pytest.approx(870 / 890)
    assert c.shed_rate == pytest.approx(0.1)
    assert c.errors == {"CLIENT_DROPPED": 10, "UNAVAILABLE": 10}  # shedding is its own column
    assert (c.throughput_rps, c.p50_ms, c.p99_ms) == (220.0, 20.0, 60.0)
    assert cell(ok=0, within=0, shed=50, dropped=0, other=0).within_of_admitted is None  # nothing admitted


def test_a_point_measured_without_the_objective_is_refused(make_point):
    with pytest.raises(ValueError, match="without an objective"):
        cell_from_point("slo", "light", 100.0, make_point(goodput_rps=None))


def cells_for(cell, slo_within, slo_near_ok, fixed_near_ok):
    """Cells of fixed_1ms, fixed_5ms and slo at every load; slo's within-counts per load, near-capacity OKs."""
    cells = []
    for load, within in zip(LOADS, slo_within):
        for name, ok in (("fixed_1ms", fixed_near_ok[0]), ("fixed_5ms", fixed_near_ok[1]), ("slo", slo_near_ok)):
            if name == "slo":
                cells.append(cell("slo", load.name, ok=1000, within=within, shed=0, dropped=0, other=0))
            else:
                cells.append(cell(name, load.name, ok=ok, within=0, shed=0, dropped=0, other=0))
            if load.name == "near capacity" and name == "slo":
                cells[-1] = cell("slo", load.name, ok=slo_near_ok, within=round(slo_near_ok * within / 1000), shed=0,
                                 dropped=0, other=0)
    return cells


@pytest.mark.parametrize("slo_within, slo_near_ok, fixed_near_ok, verdicts", [
    ((1000, 995, 990), 900, (880, 900), [True, True, True, True]),  # 99.0% is enough; equal throughput is enough
    ((1000, 995, 989), 900, (880, 900), [True, True, False, True]),  # 98.9% at 2x over
    ((1000, 995, 990), 899, (880, 900), [True, True, True, False]),  # 1 request short of the best fixed delay
    ((980, 1000, 1000), 950, (960, 900), [False, True, True, False]),  # the best fixed delay is fixed_1ms here
])
def test_targets_judge_slo_at_every_load_and_against_the_best_fixed_delay(cell, slo_within, slo_near_ok,
                                                                          fixed_near_ok, verdicts):
    cells = cells_for(cell, slo_within, slo_near_ok, fixed_near_ok)
    targets = evaluate_targets(cells, "slo", ["fixed_1ms", "fixed_5ms"], "near capacity", 90.0)
    assert [t.passed for t in targets] == verdicts
    assert [t.name for t in targets] == [
        "slo at light: admitted within 90 ms", "slo at near capacity: admitted within 90 ms",
        "slo at 2x over: admitted within 90 ms", "slo / best fixed throughput at near capacity",
    ]
    best = "fixed_1ms" if fixed_near_ok[0] > fixed_near_ok[1] else "fixed_5ms"
    assert best in targets[-1].detail


@pytest.mark.parametrize("slo_ok, slo_of_arrivals, fixed_ok, fixed_of_arrivals, ratio", [
    (2408, 2410, 2410, 2410, 1.0),  # both answered every arrival: completions in the windows differ by 2
    (2410, 2380, 2408, 2410, 2380 / 2410),  # shed 30 of the same arrivals
    (2408, None, 2410, None, 2408 / 2410),  # without arrival counts (a closed-loop point): completions
])
def test_throughput_near_capacity_compares_answers_to_the_same_arrivals(cell, slo_ok, slo_of_arrivals, fixed_ok,
                                                                        fixed_of_arrivals, ratio):
    cells = [cell("fixed_5ms", "near capacity", ok=fixed_ok, shed=0, dropped=0, other=0,
                  ok_of_arrivals=fixed_of_arrivals),
             cell("slo", "near capacity", ok=slo_ok, within=slo_ok, shed=0, dropped=0, other=0,
                  ok_of_arrivals=slo_of_arrivals)]
    (_, throughput) = evaluate_targets(cells, "slo", ["fixed_5ms"], "near capacity", 90.0)
    assert throughput.measured == pytest.approx(ratio) and throughput.passed == (ratio >= 1.0)
    assert ("of the same arrivals" in throughput.detail) == (slo_of_arrivals is not None)
    assert cells[1].answered_rps == (None if slo_of_arrivals is None else pytest.approx(slo_of_arrivals / 4))


def test_a_slo_schedule_that_admitted_nothing_fails(cell):
    cells = [cell("fixed_5ms", "near capacity", shed=0), cell("slo", "near capacity", ok=0, within=0, dropped=0,
                                                                 other=0)]
    (within, throughput) = evaluate_targets(cells, "slo", ["fixed_5ms"], "near capacity", 90.0)
    assert not within.passed and within.detail == "nothing admitted"
    assert not throughput.passed and throughput.measured == 0


def test_the_table_lists_every_cell_and_the_verdicts(cell):
    cells = [cell("fixed_5ms", "light"), cell("slo", "light", ok=0, within=0, dropped=0, other=0)]
    table = format_cells(cells).splitlines()
    assert table[0].split()[:4] == ["load", "schedule", "offered/s", "req/s"]
    assert "in SLO/admitted" in table[0] and "server: in SLO/ok" in table[0]
    assert table[1].split()[:2] == ["light", "fixed_5ms"] and "97.8%" in table[1] and "99.5%" in table[1]
    assert "CLIENT_DROPPED 10, UNAVAILABLE 10" in table[1]
    assert table[2].split()[:2] == ["light", "slo"] and " - " in table[2]  # nothing admitted: no share
    text = format_targets(evaluate_targets(cells, "slo", ["fixed_5ms"], "light", 90.0))
    assert text.count("FAIL") == 2 and ">= 99.0%" in text and ">= 1" in text


def test_a_share_just_short_of_the_target_is_not_printed_as_met():
    near_miss = Target("slo at 2x over: admitted within 105 ms", 2612 / 2639, 0.99, False, "2,612 of 2,639")
    line = format_targets([near_miss]).splitlines()[1]
    assert "98.98%" in line and "99.0%" not in line.split(">=")[0] and "FAIL" in line


# A model that runs in about a millisecond even on a busy machine, and short points: the whole run
# (server start-up, capacity, 3 loads x 3 schedules) takes a few seconds.
TINY = BenchSettings(
    features=64, repeats=2, max_batch_size=4, delays_us=(1000,), slo_ms=50.0, threads=1,
    timing=Timing(warmup_s=0.2, window_s=0.3, windows=1, pause_s=0.05, capacity_warmup_s=0.2, capacity_window_s=0.3),
)


def test_a_tiny_run_measures_every_schedule_at_every_load(tmp_path):
    lines = []
    result = run_bench_scheduling(TINY, quick=True, say=lines.append)
    assert result.objective_ms == 50.0 and result.objective_source == "--slo-ms"
    assert set(result.run_time_ms) == {1, 4} and all(t > 0 for t in result.run_time_ms.values())
    assert set(result.capacity_points) == {"fixed_1ms"} and set(result.open_capacity_points) == {"fixed_1ms"}
    assert 0 < result.capacity_rps <= result.closed_capacity_rps
    assert result.open_capacity_points["fixed_1ms"].mode == "rate"
    assert result.open_capacity_points["fixed_1ms"].level == pytest.approx(result.closed_capacity_rps)
    assert [(c.load, c.schedule) for c in result.cells] == [
        (load.name, name) for load in LOADS for name in ("no_batching", "fixed_1ms", "slo")]
    for c in result.cells:
        load = next(load for load in LOADS if load.name == c.load)
        assert c.offered_rps == pytest.approx(load.fraction * result.capacity_rps)
        assert 0 <= c.within <= c.admitted <= c.requests
    assert sum(c.requests for c in result.cells) > 0  # not every cell: a busy machine can stall one 0.3 s window
    assert any(c.server_within_of_ok is not None for c in result.cells)  # read from the server's /metrics
    assert result.slo_estimates["light"].startswith("batch run time")  # the SLO model's DEBUG log line
    assert len(result.targets) == 4
    text = format_report(result)
    assert "objective: 50 ms" in text and "fixed_1ms" in text and "open loop at that rate" in text and text.count("PASS") + text.count("FAIL") == 4
    data = json.loads(write_json(result, tmp_path / "bench_scheduling.json").read_text())
    assert data["objective_ms"] == 50.0 and len(data["cells"]) == 9 and data["settings"]["max_batch_size"] == 4

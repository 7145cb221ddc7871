"""Report files: JSON round-trips, CSV and PNG are written and parseable; --compare plots several results."""

import csv
import json
import sys

import pytest

from loadtest.cli import main
from loadtest.report import CSV_COLUMNS, format_table, plot_latency_throughput, write_csv, write_json
from loadtest.results import LoadtestResult
from loadtest.stats import LatencyMs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def sweep(make_result, make_point):
    return make_result([
        make_point(level=1.0, throughput_rps=400.0, rows_per_s=400.0, latency_ms=LatencyMs(2, 3, 4, 5, 2.2, 6)),
        make_point(level=64.0, throughput_rps=2000.0, rows_per_s=2000.0, latency_ms=LatencyMs(30, 40, 55, 70, 31, 80),
                   errors={"RESOURCE_EXHAUSTED": 3}, error_rate=3 / 4003, stable=False, loadgen_busiest_process=0.97),
    ])


def test_json_round_trips_exactly(sweep, tmp_path):
    path = write_json(sweep, tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["points"][0]["batch_sizes"] == {"1": 100, "4": 900}  # JSON keys are strings
    assert data["seed"] == 0 and data["schema"] == 1
    assert LoadtestResult.load(path) == sweep


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(extra=1), "unknown field"),
    (lambda d: d.pop("model"), "missing field"),
    (lambda d: d["points"][0].update(p99=1), r"points\[0\]: unknown field"),
    (lambda d: d.update(schema=99), "unsupported result schema"),
])
def test_loading_a_malformed_result_names_the_problem(sweep, tmp_path, mutate, message):
    data = sweep.to_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        LoadtestResult.load(path)


def test_csv_has_one_row_per_level(sweep, tmp_path):
    path = write_csv([sweep], tmp_path / "r.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["level"] for r in rows] == ["1.0", "64.0"]
    assert float(rows[1]["p99_ms"]) == 55 and rows[1]["errors"] == "RESOURCE_EXHAUSTED=3"
    assert rows[0]["batch_sizes"] == "1=100;4=900"


def test_png_plot_is_written(sweep, tmp_path):
    path = plot_latency_throughput([sweep], tmp_path / "r.png")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_table_shows_levels_and_warnings(sweep):
    table = format_table(sweep)
    assert "c=1" in table and "c=64" in table and "RESOURCE_EXHAUSTED 3" in table
    assert "goodput@10ms" in table
    assert "client may be the bottleneck" in table and "did not settle" in table


def test_compare_puts_several_results_on_one_plot(sweep, make_result, tmp_path, capsys):
    other = make_result(label="tiny stream", transport="stream")
    a, b = write_json(sweep, tmp_path / "a.json"), write_json(other, tmp_path / "b.json")
    assert main(["loadtest", "--compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.png").read_bytes().startswith(PNG_MAGIC)
    with (tmp_path / "cmp" / "compare.csv").open() as f:
        assert {r["label"] for r in csv.DictReader(f)} == {"tiny unary", "tiny stream"}
    out = capsys.readouterr().out
    assert "tiny unary" in out and "tiny stream" in out


def test_compare_of_a_file_that_is_not_a_result_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("[]")
    with pytest.raises(SystemExit) as exc:
        main(["loadtest", "--compare", str(bad)])
    assert exc.value.code == 2
    assert "not a loadtest result" in capsys.readouterr().err


@pytest.fixture
def failed_level(make_point):
    """A level where every request failed: no latency was measured (the result holds zeros)."""
    return make_point(level=128.0, requests=50, ok=0, throughput_rps=0.0, rows_per_s=0.0,
                      latency_ms=LatencyMs(0, 0, 0, 0, 0, 0), errors={"UNAVAILABLE": 50}, error_rate=1.0, goodput_rps=0.0)


def test_a_level_without_successes_shows_no_latency(sweep, failed_level, tmp_path):
    sweep.points.append(failed_level)
    [line] = [line for line in format_table(sweep).splitlines() if line.startswith("c=128")]
    assert line.split()[3:7] == ["-", "-", "-", "-"] and "0.00" not in line
    with write_csv([sweep], tmp_path / "r.csv").open() as f:
        row = list(csv.DictReader(f))[-1]
    assert [row[c] for c in ("p50_ms", "p99_ms", "p999_ms", "max_ms")] == ["", "", "", ""]
    assert row["errors"] == "UNAVAILABLE=50" and float(row["error_rate"]) == 1.0


def test_the_plot_leaves_out_levels_without_latency(sweep, failed_level, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: drawn.append(self))
    sweep.points.append(failed_level)
    plot_latency_throughput([sweep], tmp_path / "r.png")
    [ax] = drawn[0].axes
    plotted = [(x, y) for line in ax.lines[:2] for x, y in zip(line.get_xdata(), line.get_ydata())]
    assert plotted and all(y > 0 for _, y in plotted)  # not a 0 ms point at 0 req/s
    assert ax.get_yscale() == "log"


def test_few_samples_say_which_percentiles_are_the_slowest_request(make_result, make_point):
    table = format_table(make_result([make_point(level=1.0, ok=50), make_point(level=2.0, ok=400),
                                      make_point(level=4.0, ok=1000), make_point(level=8.0, ok=0)]))
    assert ("note: few successful requests at c=1 (50: p99 and p99.9 are the slowest), "
            "c=2 (400: p99.9 is the slowest)") in table
    assert "c=4 (" not in table and "c=8 (" not in table


def test_the_inputs_sent_are_reported_and_saved(make_result, tmp_path):
    result = make_result(inputs=["INPUT0 FP32 [2,1,3] random normal, open (-1) dimensions after the first sent as 1"])
    assert "\ninputs: INPUT0 FP32 [2,1,3] random normal, open (-1)" in format_table(result)
    assert LoadtestResult.load(write_json(result, tmp_path / "r.json")) == result
    older = result.to_dict()
    del older["inputs"]  # a result saved before inputs were recorded still loads
    (tmp_path / "old.json").write_text(json.dumps(older))
    assert LoadtestResult.load(tmp_path / "old.json").inputs == []


def test_csv_says_what_goodput_was_measured_against(sweep, make_result, tmp_path):
    with write_csv([sweep, make_result(slo_ms=None)], tmp_path / "r.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["slo_ms"] for r in rows] == ["10.0", "10.0", ""]


def test_compare_gates_on_assert(sweep, make_result, tmp_path, capsys):
    a = write_json(sweep, tmp_path / "a.json")
    args = ["loadtest", "--compare", str(a), "--out", str(tmp_path / "cmp")]
    assert main([*args, "--assert", "p99<100ms"]) == 0
    assert main([*args, "--assert", "p99<50ms,errors<0.1%"]) == 1  # c=64: p99 55 ms
    out = capsys.readouterr().out
    assert "tiny unary:\n" in out and "FAIL  p99<50ms" in out and "at c=64" in out and "actual 55 ms" in out
    b = write_json(make_result(slo_ms=None), tmp_path / "b.json")
    with pytest.raises(SystemExit) as exc:
        main(["loadtest", "--compare", str(a), str(b), "--assert", "goodput>1"])
    assert exc.value.code == 2 and f"goodput: {b} measured no goodput" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["loadtest", "--compare", str(a), "--assert", "p99<50"])
    assert exc.value.code == 2 and "a latency needs a unit" in capsys.readouterr().err


def test_without_matplotlib_the_png_is_skipped_with_a_note(sweep, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed: it is an optional dependency
    a = write_json(sweep, tmp_path / "a.json")
    assert main(["loadtest", "--compare", str(a), "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert f"wrote {tmp_path / 'compare.csv'}" in captured.out and not (tmp_path / "compare.png").exists()
    assert "no compare.png: matplotlib is not installed" in captured.err

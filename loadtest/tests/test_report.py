"""Report files: JSON round-trips, CSV and PNG are written and parseable; --compare plots several results."""

import csv
import json

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

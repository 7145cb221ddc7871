"""The Grafana dashboard: the panels the fleet needs, and every query on metrics the server really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ops.gpu import GpuCollector
from ops.metrics import FAMILIES
from ops.tls_metrics import TLS_FAMILIES
from server.testing import scrape_metrics

DASHBOARD = Path(__file__).resolve().parents[1] / "grafana" / "fleetserve.json"
PROMETHEUS_OWN = {"up"}  # written by Prometheus itself for every target
GPU = {m.name for m in GpuCollector(None, []).describe()}  # type: ignore[arg-type]  # only where a GPU is
SEQUENCES = {"fleetserve_sequences_live"}  # only where a model runs sequences (server/tests/test_sequence_batching.py)
# only where a listener serves TLS (server/tests/test_tls.py scrapes them)
TLS = {f"{name}_total" if kind == "counter" else name for name, kind in TLS_FAMILIES}


def panels() -> list[dict]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels() for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers in metric position (not labels, functions or keywords)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # drop string literals
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # drop label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # drop label lists
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*[{\[])", expr))  # selectors: name{...} or name[...]
    names |= set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*\))", expr))  # bare selectors: rate(x) sum(x)
    return {n for n in names if not n.startswith("$")}


def test_the_panels_the_issue_asks_for_are_there():
    titles = {p["title"] for p in panels()}
    for wanted in ("Request rate", "Error ratio", "Latency p50 / p99", "Queue vs compute time",
                   "Batch size distribution", "Queue depth", "Saturation", "Model versions by state",
                   "Per-model breakdown", "In-flight requests per replica"):
        assert wanted in titles
    assert all(p.get("description") for p in panels()), "every panel says what it shows"
    ids = [p["id"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    assert len(ids) == len(set(ids))


def test_every_query_uses_metrics_the_server_exports(fleetserve, traffic):
    traffic(fleetserve, 1)
    exported = {name for name, _ in scrape_metrics(fleetserve.metrics_url)}
    used = {name for _, expr in queries() for name in metric_names(expr)}
    assert {"fleetserve_inference_requests_total", "fleetserve_request_duration_seconds_bucket",
            "fleetserve_kernel_busy_seconds_total"} <= used  # the parser finds names at all
    unknown = used - exported - PROMETHEUS_OWN - GPU - SEQUENCES - TLS
    assert not unknown, f"dashboard queries use metrics fleetserve does not export: {sorted(unknown)}"
    assert GPU & used, "the GPU panel queries the GPU families"
    assert SEQUENCES <= used and SEQUENCES <= {name for name, _ in FAMILIES}, "the live sequences panel's family"
    assert TLS & used, "the TLS panel queries the TLS families"


def test_the_query_parser_finds_names_in_every_position():
    assert metric_names('sum by (le) (rate(a_bucket{job=~"$job"}[$__rate_interval])) / sum(b) + c[5m] '
                        '- histogram_quantile(0.5, d{x="rate(e)"})') == {"a_bucket", "b", "c", "d"}


def unit_of(panel: dict, ref: str) -> str:
    """The unit Grafana shows a query's values in: its refId's override, else the panel's default."""
    for override in panel["fieldConfig"].get("overrides", []):
        if override["matcher"] == {"id": "byFrameRefID", "options": ref}:
            return next(p["value"] for p in override["properties"] if p["id"] == "unit")
    return panel["fieldConfig"]["defaults"].get("unit", "")


def test_seconds_and_bytes_are_shown_in_their_units():
    for panel in panels():
        if panel["type"] == "table":
            continue  # a table's columns carry their units by name (checked below)
        for target in panel.get("targets", []):
            expr, unit = target["expr"], unit_of(panel, target["refId"])
            if expr.startswith("histogram_quantile(") and "_seconds_bucket" in expr:
                assert unit == "s", (panel["title"], target["refId"], unit)
            if re.fullmatch(r"sum by \([a-z, ]+\) \([a-z_]+_bytes\{[^}]*\}\)", expr):
                assert unit == "bytes", (panel["title"], target["refId"], unit)
    table = next(p for p in panels() if p["title"] == "Per-model breakdown")
    assert all(t.get("format") == "table" and t.get("instant") for t in table["targets"]), "one row per version"
    assert any(t["id"] == "merge" for t in table.get("transformations", []))
    units = {o["matcher"]["options"]: o["properties"][0]["value"] for o in table["fieldConfig"]["overrides"]}
    assert units.get("errors") == "percentunit" and units.get("p99") == "s"

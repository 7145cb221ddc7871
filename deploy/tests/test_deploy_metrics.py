"""The metric names deploy/ autoscales on are ones the server exports.

deploy/metric_names.txt is the one list: the first test keeps it equal to the fleetserve_* names the
Prometheus adapter rules and the KEDA queries use, the second checks it against the families
ops/metrics.py declares, and the third (marked ``crosscheck``, for issue 4) against what a live
server's metrics port serves. That one starts a real server: it fails, never skips, when the metrics
port is not served.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ops.metrics import FAMILIES
from server.settings import EXAMPLE_REPOSITORY
from server.testing import ServerProcess

DEPLOY = Path(__file__).resolve().parents[1]
NAME = re.compile(r"\bfleetserve_[a-z0-9_]+\b")


def listed_names() -> set[str]:
    lines = (DEPLOY / "metric_names.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def queried_names() -> set[str]:
    """Every fleetserve_* name in a PromQL query of deploy/: adapter rules and KEDA triggers."""
    queries: list[str] = []
    rules = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())["rules"]["custom"]
    for rule in rules:
        queries += [rule["seriesQuery"], rule["metricsQuery"], rule["name"]["matches"]]
    for path in DEPLOY.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ScaledObject":
                queries += [t["metadata"]["query"] for t in doc["spec"]["triggers"]]
    return {name for query in queries for name in NAME.findall(query)}


def test_the_list_is_exactly_the_names_the_manifests_query():
    assert queried_names() == listed_names()


def test_ops_metrics_declares_every_listed_name():
    declared = dict(FAMILIES)
    for name in listed_names():
        family = name.removesuffix("_total") if name.endswith("_total") else name
        assert family in declared, f"{name}: ops/metrics.py declares no family {family}"
        if name.endswith("_total"):
            assert declared[family] == "counter", f"{name}: {family} is a {declared[family]}, not a counter"


@pytest.mark.crosscheck("issue 4")
def test_a_live_server_exports_every_listed_name():
    """CROSS-CHECK (issue 4): scrape a real server's metrics port; fails if it is not served."""
    with ServerProcess(EXAMPLE_REPOSITORY) as server:
        client = tc.InferenceServerClient(server.grpc_address)
        data = tc.InferInput("INPUT0", [1, 16], "FP32")
        data.set_data_from_numpy(np.ones((1, 16), np.float32))
        client.infer("dense", [data])  # so per-model series exist
        client.close()
        port = getattr(server, "metrics_port", 0)
        assert port, f"the server reported no metrics port (issue 4 not landed?); its log:\n{server.log}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    exported = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    missing = sorted(listed_names() - exported)
    assert not missing, f"deploy/ queries metrics the server does not export: {missing}"


def test_the_readme_names_the_adapter_metrics_and_targets_the_manifests_use():
    """README "Metrics" shows an adapter rule and an HPA line: their names and targets are deploy/'s, not
    others an SRE would copy (the adapter's `as` names are what the HPA asks the custom metrics API for)."""
    readme = (DEPLOY.parent / "README.md").read_text()
    rules = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())["rules"]["custom"]
    served = {rule["name"]["as"] for rule in rules}
    hpa = yaml.safe_load((DEPLOY / "components" / "hpa" / "hpa.yaml").read_text())
    targets = {m["pods"]["metric"]["name"]: m["pods"]["target"]["averageValue"] for m in hpa["spec"]["metrics"]}
    shown_as = set(re.findall(r"\bas: (fleetserve_[a-z_]+)", readme))
    shown_hpa = re.findall(r"metric: \{name: (fleetserve_[a-z_]+)\}, target: \{type: AverageValue, averageValue: "
                           r"\"([^\"]+)\"\}", readme)
    assert shown_as and shown_as <= served, f"README's adapter rules serve {shown_as}; deploy/ serves {served}"
    assert shown_hpa and all(targets.get(name) == value for name, value in shown_hpa), (shown_hpa, targets)

"""A real Prometheus (Debian's package) on loopback scrapes a real fleetserve; the dashboard's queries return data.

Prometheus scrapes every second with the alert rules loaded; traffic runs while the test asks
Prometheus' HTTP API for every dashboard query (Grafana's variables replaced), until each key
panel's query returns finite numbers.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from ops.tests.test_alerts import ALERTS as ALERT_NAMES

DASHBOARD = Path(__file__).resolve().parents[1] / "grafana" / "fleetserve.json"
ALERTS = Path(__file__).resolve().parents[1] / "prometheus" / "alerts.yml"
KEY_PANELS = ("Request rate", "Error ratio", "Latency p50 / p99", "Queue vs compute time", "Queue time p99",
              "Batch size distribution", "Mean batch size", "Queue depth", "In-flight requests per replica",
              "Saturation", "Model versions by state", "Replicas up and ready", "Per-model breakdown")
# no GPU on this host, no sequence model in the test's repository and no TLS: those families are absent by design
NOT_HERE = ("GPU utilisation and memory", "Live sequences", "TLS certificate time left")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


@pytest.fixture
def prometheus(tmp_path, tool, fleetserve):
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{ALERTS}']\n"
        "scrape_configs:\n"
        "  - job_name: fleetserve\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{fleetserve.metrics_port}']}}]\n"
    )
    proc = subprocess.Popen(
        [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/-/ready", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, f"prometheus did not start: {proc.stderr}"
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def dashboard_queries() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = (target["expr"].replace("$__rate_interval", "5s").replace('=~"$job"', '=~".*"')
                    .replace('=~"$model"', '=~".*"'))
            out.setdefault(panel["title"], []).append(expr)
    return out


def values(base: str, expr: str) -> list[float]:
    reply = get(base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert reply["status"] == "success", (expr, reply)
    return [float(v["value"][1]) for v in reply["data"]["result"]]


def has_data(title: str, got: list[float]) -> bool:
    """Key panels need finite numbers (rates and latencies above zero somewhere); the others any series
    (a load-time percentile is NaN when no model loaded within the window, as here)."""
    if title not in KEY_PANELS:
        return bool(got)
    finite = [v for v in got if math.isfinite(v)]
    return bool(finite) and (title not in ("Request rate", "Latency p50 / p99") or any(v > 0 for v in finite))


def test_dashboard_queries_return_data_through_prometheus(prometheus, fleetserve, traffic):
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            traffic(fleetserve, 1)
            time.sleep(0.02)

    sender = threading.Thread(target=load, daemon=True)
    sender.start()
    queries = dashboard_queries()
    assert set(KEY_PANELS) <= set(queries) and set(NOT_HERE) <= set(queries)
    for title in NOT_HERE:  # no data here, but Prometheus must accept the query (an HTTP 400 raises)
        for expr in queries[title]:
            values(prometheus, expr)
    pending = {(title, expr) for title in queries if title not in NOT_HERE for expr in queries[title]}
    try:
        deadline = time.monotonic() + 40
        while pending and time.monotonic() < deadline:
            for title, expr in sorted(pending):
                if has_data(title, values(prometheus, expr)):
                    pending.discard((title, expr))
            time.sleep(0.5)
    finally:
        stop.set()
        sender.join(30)
    assert not pending, f"dashboard queries without data after 40 s: {sorted(pending)}"
    rules = get(prometheus + "/api/v1/rules")["data"]["groups"][0]["rules"]
    assert len(rules) == len(ALERT_NAMES) and all(r["health"] == "ok" for r in rules), rules
    targets = get(prometheus + "/api/v1/targets")["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"]

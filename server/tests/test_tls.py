"""TLS on both transports: real servers with certificates from a test CA (trustme), tritonclient and requests
as the clients, certificates rotated under a running server, and files that cannot serve stopping the start."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as tc
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from model_store.examples import REPOSITORY
from server.testing import ServerProcess, scrape_metrics, wait_until
from server.tls_testing import Pki, make_pki, tls_args


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPOSITORY / "add_one", root / "add_one")
    return root


def add_one_grpc(client: tc.InferenceServerClient) -> np.ndarray:
    tensor = tc.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.arange(16, dtype=np.float32).reshape(1, 16))
    return client.infer("add_one", [tensor]).as_numpy("OUTPUT0")


def add_one_http(client: th.InferenceServerClient) -> np.ndarray:
    tensor = th.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.arange(16, dtype=np.float32).reshape(1, 16))
    return client.infer("add_one", [tensor]).as_numpy("OUTPUT0")


EXPECTED = np.arange(16, dtype=np.float32).reshape(1, 16) + 1


def grpc_client(address: str, ca: Path | None, cert: Path | None = None, key: Path | None = None,
                **kwargs) -> tc.InferenceServerClient:
    if ca is None:
        return tc.InferenceServerClient(address, **kwargs)
    return tc.InferenceServerClient(address, ssl=True, root_certificates=str(ca),
                                    private_key=str(key) if key else None,
                                    certificate_chain=str(cert) if cert else None, **kwargs)


def refused_over_grpc(address: str, ca: Path | None, cert: Path | None = None, key: Path | None = None) -> str:
    """The error a gRPC client gets that cannot complete the handshake (its message)."""
    with grpc_client(address, ca, cert, key) as client:
        with pytest.raises(InferenceServerException) as caught:
            client.is_server_live(client_timeout=5)
    return str(caught.value)


@pytest.fixture(scope="module")
def server_tls(repo: Path, tmp_path_factory: pytest.TempPathFactory):
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    with ServerProcess(repo, *tls_args(pki)) as server:
        yield server, pki


def test_tritonclient_infers_over_grpc_and_https_with_the_servers_ca(server_tls) -> None:
    server, pki = server_tls
    with grpc_client(server.grpc_address, pki.ca) as client:
        np.testing.assert_array_equal(add_one_grpc(client), EXPECTED)
    client = th.InferenceServerClient(server.http_address, ssl=True, ssl_options={"ca_certs": str(pki.ca)})
    try:
        np.testing.assert_array_equal(add_one_http(client), EXPECTED)
    finally:
        client.close()
    reply = requests.get(f"https://127.0.0.1:{server.http_port}/v2/health/ready", verify=pki.ca, timeout=10)
    assert reply.status_code == 200
    assert "gRPC listening on" in server.log and "(TLS)" in server.log


def test_plain_clients_and_other_cas_are_refused_and_the_metrics_port_stays_plain(server_tls, tmp_path: Path) -> None:
    server, pki = server_tls
    assert "UNAVAILABLE" in refused_over_grpc(server.grpc_address, None)
    other = make_pki(tmp_path / "other")
    assert "UNAVAILABLE" in refused_over_grpc(server.grpc_address, other.ca)  # a server this client cannot trust
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{server.http_port}/v2/health/ready", timeout=10)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://127.0.0.1:{server.http_port}/v2/health/ready", verify=other.ca, timeout=10)
    assert ("fleetserve_server_ready", frozenset()) in scrape_metrics(server.metrics_url)  # plain HTTP
    with grpc_client(server.grpc_address, pki.ca) as client:  # still serving
        assert client.is_server_ready()


def test_mutual_tls_serves_clients_with_a_certificate_of_the_ca_and_no_others(repo: Path, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other")
    with ServerProcess(repo, *tls_args(pki, mutual=True)) as server:
        with grpc_client(server.grpc_address, pki.ca, pki.client_cert, pki.client_key) as client:
            np.testing.assert_array_equal(add_one_grpc(client), EXPECTED)
        assert "UNAVAILABLE" in refused_over_grpc(server.grpc_address, pki.ca)  # no client certificate
        # a client certificate of another CA
        assert "UNAVAILABLE" in refused_over_grpc(server.grpc_address, pki.ca, other.client_cert, other.client_key)
        url = f"https://127.0.0.1:{server.http_port}/v2/health/ready"
        assert requests.get(url, verify=pki.ca, cert=(pki.client_cert, pki.client_key), timeout=10).status_code == 200
        for cert in (None, (other.client_cert, other.client_key)):
            with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
                requests.get(url, verify=pki.ca, cert=cert, timeout=10)
        assert "(TLS, clients must present a certificate)" in server.log


def install(source: Pki, target: Pki) -> None:
    """Replace ``target``'s server files by ``source``'s as a Secret's update does: each file swapped whole."""
    for src, dst in ((source.cert, target.cert), (source.key, target.key), (source.ca, target.ca)):
        staged = dst.with_suffix(".new")
        shutil.copyfile(src, staged)
        os.replace(staged, dst)


def https_ok(port: int, ca: Path) -> bool:
    try:
        return requests.get(f"https://127.0.0.1:{port}/v2/health/live", verify=ca, timeout=5).status_code == 200
    except requests.exceptions.SSLError:
        return False


def test_a_rotated_certificate_serves_new_connections_without_a_restart(repo: Path, tmp_path: Path) -> None:
    first_expiry = datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    live = make_pki(tmp_path / "live", "127.0.0.1", not_after=first_expiry)  # the files the server reads
    first_ca = tmp_path / "first-ca.pem"  # what clients trusted before the rotation
    shutil.copyfile(live.ca, first_ca)
    with ServerProcess(repo, *tls_args(live), "--tls-reload-secs", "0.2") as server:
        held = grpc_client(server.grpc_address, first_ca)
        try:
            np.testing.assert_array_equal(add_one_grpc(held), EXPECTED)  # a connection open before the rotation
            assert tls_metrics(server) == {"grpc": (first_expiry.timestamp(), 0, 0),
                                           "http": (first_expiry.timestamp(), 0, 0)}
            rotated_expiry = datetime(2032, 6, 7, 8, 9, 10, tzinfo=timezone.utc)
            rotated = make_pki(tmp_path / "rotated", "127.0.0.1", not_after=rotated_expiry)
            install(rotated, live)
            # gRPC: the next connection's handshake uses the new files
            with grpc_client(server.grpc_address, rotated.ca) as client:
                np.testing.assert_array_equal(add_one_grpc(client), EXPECTED)
            assert "UNAVAILABLE" in refused_over_grpc(server.grpc_address, first_ca)
            np.testing.assert_array_equal(add_one_grpc(held), EXPECTED)  # the open connection keeps its own
        finally:
            held.close()
        # REST: within its check interval
        assert wait_until(lambda: https_ok(server.http_port, rotated.ca), timeout_s=10)
        assert not https_ok(server.http_port, first_ca)
        assert server.wait_for_log("gRPC TLS certificate reloaded")
        assert server.wait_for_log("REST TLS certificate reloaded")
        rotated_s = rotated_expiry.timestamp()
        assert tls_metrics(server) == {"grpc": (rotated_s, 1, 0), "http": (rotated_s, 1, 0)}

        # A change that cannot serve (the key of another certificate) is logged once; the rotated one stays.
        stray = make_pki(tmp_path / "stray")
        staged = live.key.with_suffix(".new")
        shutil.copyfile(stray.key, staged)
        os.replace(staged, live.key)
        time.sleep(0.6)  # three REST checks
        for _ in range(3):
            with grpc_client(server.grpc_address, rotated.ca) as client:
                np.testing.assert_array_equal(add_one_grpc(client), EXPECTED)
        assert https_ok(server.http_port, rotated.ca)
        assert server.log.count("gRPC TLS certificate files changed but cannot be used") == 1
        assert server.log.count("REST TLS certificate files changed but cannot be used") == 1
        # the certificate served is still the rotated one: its expiry, not the stray one's
        assert tls_metrics(server) == {"grpc": (rotated_s, 1, 1), "http": (rotated_s, 1, 1)}


def tls_metrics(server: ServerProcess) -> dict[str, tuple[float, float, float]]:
    """Per listener: (expiry timestamp, reloads, reload errors), scraped."""
    samples = scrape_metrics(server.metrics_url)
    return {listener: tuple(samples[(name, frozenset({("listener", listener)}))] for name in (
        "fleetserve_tls_certificate_expiry_timestamp_seconds", "fleetserve_tls_certificate_reloads_total",
        "fleetserve_tls_certificate_reload_errors_total")) for listener in ("grpc", "http")}


def serve_until_exit(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", "serve", "--model-repository", str(repo), "--host",
                           "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])


def test_certificate_files_that_cannot_serve_stop_the_start_naming_the_file(repo: Path, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    stray = make_pki(tmp_path / "stray")
    missing = tmp_path / "nowhere.pem"
    cases = [
        (["--grpc-server-key", str(missing)], f"cannot read {missing}"),
        (["--grpc-server-key", str(stray.key)], "are not a PEM certificate chain and its private key"),
        (["--grpc-root-cert", str(pki.key)], f"{pki.key} is not a PEM bundle of CA certificates"),
        (["--http-use-ssl", "--http-server-cert", str(missing)], f"cannot read {missing}"),
    ]
    for extra, message in cases:
        done = serve_until_exit(repo, "--grpc-use-ssl", "--grpc-server-cert", str(pki.cert), "--grpc-server-key",
                                str(pki.key), *extra)
        last = done.stdout.strip().splitlines()[-1]
        assert done.returncode == 1 and "cannot start: cannot serve over TLS: " in last and message in last, done.stdout


@pytest.mark.parametrize("args, message", [
    (["--grpc-use-ssl"], "--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key"),
    (["--grpc-server-cert", "c.pem"], "--grpc-server-cert apply only with --grpc-use-ssl"),
    (["--grpc-use-ssl-mutual", "--grpc-server-cert", "c.pem", "--grpc-server-key", "k.pem"],
     "--grpc-use-ssl-mutual needs --grpc-root-cert"),
    (["--http-use-ssl=true"], "--http-use-ssl needs --http-server-cert and --http-server-key"),
    (["--grpc-use-ssl=maybe"], "expected true or false, got 'maybe'"),
    (["--tls-reload-secs", "0"], "--tls-reload-secs must be a finite number of seconds > 0"),
])
def test_tls_flags_that_do_not_fit_are_refused_before_anything_starts(repo: Path, args: list[str],
                                                                      message: str) -> None:
    done = serve_until_exit(repo, *args)
    assert done.returncode == 2 and message in done.stdout, done.stdout


def test_triton_style_switch_values_turn_tls_off_as_well_as_on(repo: Path) -> None:
    with ServerProcess(repo, "--grpc-use-ssl=false", "--http-use-ssl", "false", "--grpc-use-ssl-mutual=0") as server:
        with tc.InferenceServerClient(server.grpc_address) as client:  # plain
            np.testing.assert_array_equal(add_one_grpc(client), EXPECTED)
        assert requests.get(f"{server.http_url}/v2/health/ready", timeout=10).status_code == 200


def test_a_peer_channel_whose_files_no_longer_load_is_unavailable_naming_the_replica(tmp_path: Path) -> None:
    from ops.errors import Code
    from server.tls import PeerUnreachable, TlsConfig, peer_channel

    pki = make_pki(tmp_path / "pki")
    open_channel = peer_channel(TlsConfig(pki.cert, pki.key, pki.ca, mutual=True))
    pki.key.write_bytes(b"not a key")  # rotated to something broken after the start
    with pytest.raises(PeerUnreachable) as caught:
        open_channel("10.0.0.7:8001", [])
    assert caught.value.code is Code.UNAVAILABLE
    assert "cannot call replica 10.0.0.7:8001 over TLS" in str(caught.value) and str(pki.key) in str(caught.value)

"""``fleetserve loadtest`` against a fleetserve serving mutual TLS on gRPC and REST: every transport, one and
two load-generator processes, and a client the server refuses named in one line."""

from __future__ import annotations

import json

import pytest

from loadtest.cli import main

QUICK_ARGS = ["--warmup-s", "0.2", "--window-s", "0.3", "--stable-windows", "2", "--tolerance", "0.5",
              "--max-duration-s", "1.5", "--quiet"]


@pytest.mark.parametrize("transport, processes", [("unary", 1), ("stream", 1), ("http", 1), ("http-binary", 1),
                                                  ("unary", 2), ("http", 2)])
def test_every_transport_drives_a_mutual_tls_server(tls_server, tmp_path, transport: str, processes: int) -> None:
    server, pki = tls_server
    target = server.http_address if transport.startswith("http") else server.grpc_address
    assert main(["loadtest", "--target", target, "--transport", transport, "--model", "add_one", "--concurrency",
                 "4", "--processes", str(processes), "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert),
                 "--tls-key", str(pki.client_key), *QUICK_ARGS, "--out", str(tmp_path), "--name", "run",
                 "--assert", "errors<=0"]) == 0
    point = json.loads((tmp_path / "run.json").read_text())["points"][0]
    assert point["ok"] > 0 and point["errors"] == {}


@pytest.mark.parametrize("transport", ["unary", "http"])
def test_a_client_the_server_refuses_is_named_in_one_line(tls_server, capsys, transport: str) -> None:
    server, pki = tls_server
    target = server.http_address if transport.startswith("http") else server.grpc_address
    assert main(["loadtest", "--target", target, "--transport", transport, "--model", "add_one", "--concurrency",
                 "1", "--tls-ca", str(pki.ca), *QUICK_ARGS]) == 2  # no client certificate
    err = capsys.readouterr().err
    assert err.count("\n") <= 2 and "loadtest failed" in err and target in err


@pytest.mark.parametrize("args, message", [
    (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-ca", "nowhere.pem"], "--tls-ca nowhere.pem: no such file"),
    (["--tls-server-name", "x", "--transport", "http"], "--tls-server-name applies to the gRPC transports"),
])
def test_tls_flags_that_do_not_fit_are_refused(capsys, args: list[str], message: str) -> None:
    with pytest.raises(SystemExit):
        main(["loadtest", "--target", "127.0.0.1:1", "--model", "m", *args, "--quiet"])
    assert message in capsys.readouterr().err

"""Triton's perf_analyzer, with its own TLS flags, against fleetserve serving mutual TLS on gRPC and REST (the
``tls_server`` fixture): a Triton user's load test of a TLS endpoint runs unchanged against fleetserve."""

from __future__ import annotations

import pytest

from loadtest import perf_analyzer

ANY_WINDOWS = 1000  # what happens, not how fast


def grpc_tls(pki, client: bool) -> list[str]:
    flags = ["--ssl-grpc-use-ssl", f"--ssl-grpc-root-certifications-file={pki.ca}"]
    if client:
        flags += [f"--ssl-grpc-private-key-file={pki.client_key}",
                  f"--ssl-grpc-certificate-chain-file={pki.client_cert}"]
    return flags


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
def test_perf_analyzer_drives_grpc_over_mutual_tls(pa, tls_server, streaming: bool) -> None:
    server, pki = tls_server
    result = perf_analyzer.run(pa, server.grpc_address, "add_one", concurrency=4, streaming=streaming,
                               window_ms=300, stability_percent=ANY_WINDOWS, timeout_s=90,
                               extra=grpc_tls(pki, client=True))
    assert result.throughput > 0


def test_perf_analyzer_drives_https_with_a_client_certificate(pa, tls_server) -> None:
    server, pki = tls_server
    flags = [f"--ssl-https-ca-certificates-file={pki.ca}", "--ssl-https-verify-peer=1", "--ssl-https-verify-host=2",
             f"--ssl-https-client-certificate-file={pki.client_cert}", "--ssl-https-client-certificate-type=PEM",
             f"--ssl-https-private-key-file={pki.client_key}", "--ssl-https-private-key-type=PEM"]
    result = perf_analyzer.run(pa, f"https://{server.http_address}", "add_one", concurrency=4, protocol="http",
                               window_ms=300, stability_percent=ANY_WINDOWS, timeout_s=90, extra=flags)
    assert result.throughput > 0


def test_perf_analyzer_without_a_client_certificate_is_refused(pa, tls_server) -> None:
    server, pki = tls_server
    with pytest.raises(perf_analyzer.PerfAnalyzerError):
        perf_analyzer.run(pa, server.grpc_address, "add_one", concurrency=1, window_ms=300,
                          stability_percent=ANY_WINDOWS, timeout_s=60, extra=grpc_tls(pki, client=False))

"""Metrics of the TLS listeners (server/tls.py): when the certificate each serves expires, and its reloads.

Registered only when a listener serves TLS. The expiry is the certificate in use, not the one on disk: when
rotated files fail to load, the server keeps serving the old certificate, and only this gauge (with the
reload errors) shows it running out (alert ``FleetserveCertificateExpiresSoon``, ops/runbooks).

Imports nothing from fleetserve.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry


class ServedCertificate(Protocol):
    """What a listener's certificate files report (``server.tls.CertificateFiles``)."""

    @property
    def expiry_s(self) -> float: ...  # the certificate in use: its notAfter, Unix seconds

    @property
    def reloads(self) -> int: ...  # changed files loaded

    @property
    def reload_errors(self) -> int: ...  # changed files that could not be used


class TlsMetrics(Collector):
    """One collector for every TLS listener; ``observe`` adds one ("grpc" or "http")."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._listeners: dict[str, ServedCertificate] = {}
        registry.register(self)

    def observe(self, listener: str, certificate: ServedCertificate) -> None:
        self._listeners[listener] = certificate

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "fleetserve_tls_certificate_expiry_timestamp_seconds",
            "When the certificate the listener serves now expires (notAfter), Unix time", labels=["listener"])
        reloads = CounterMetricFamily(
            "fleetserve_tls_certificate_reloads", "Changed certificate files the listener loaded", labels=["listener"])
        errors = CounterMetricFamily(
            "fleetserve_tls_certificate_reload_errors",
            "Changed certificate files the listener could not use (it kept serving the ones it had)",
            labels=["listener"])
        for listener, certificate in list(self._listeners.items()):
            expiry.add_metric([listener], certificate.expiry_s)
            reloads.add_metric([listener], certificate.reloads)
            errors.add_metric([listener], certificate.reload_errors)
        yield expiry
        yield reloads
        yield errors

    def describe(self) -> Iterable[Metric]:
        return [Metric(name, "", kind) for name, kind in TLS_FAMILIES]


# Exported only by a server with a TLS listener.
TLS_FAMILIES: tuple[tuple[str, str], ...] = (
    ("fleetserve_tls_certificate_expiry_timestamp_seconds", "gauge"),
    ("fleetserve_tls_certificate_reloads", "counter"),
    ("fleetserve_tls_certificate_reload_errors", "counter"),
)

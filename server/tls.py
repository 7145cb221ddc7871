"""TLS for the gRPC and REST listeners, and for the gRPC calls one replica makes to another.

Certificates are files in PEM (a chain and its key, and for mutual TLS the CA bundle clients must
chain to), read at start-up, where anything wrong with them stops the server with a message that
names the file, and read again when they change: a rotated certificate (cert-manager's renewal,
a Kubernetes Secret's update) serves new connections without a restart, and connections already
open keep theirs. gRPC checks the files before every new connection's handshake (grpc's dynamic
server credentials); REST checks them every ``reload_interval_s`` (``HttpTlsReloader``). A change
that does not load (a key that is not the certificate's, a file half written) is logged once and the
certificates in use stay until the files are right. The metrics port stays plain HTTP, as Triton's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.registry import CollectorRegistry

from ops.errors import Code, ServingError
from ops.tls_metrics import TlsMetrics

log = logging.getLogger(__name__)


class TlsError(Exception):
    """Certificate files that cannot serve: the message names the file and what is wrong with it."""


class PeerUnreachable(ServingError):
    """Another replica cannot be called: this one's certificate files no longer load (UNAVAILABLE)."""

    code = Code.UNAVAILABLE


@dataclass(frozen=True)
class TlsConfig:
    """One listener's TLS. ``root``: the CA bundle a client's certificate must chain to (mutual TLS), and
    the one a replica checks its peers' certificates against; ``mutual``: clients must present a certificate."""

    cert: Path
    key: Path
    root: Path | None = None
    mutual: bool = False

    def __post_init__(self) -> None:
        if self.mutual and self.root is None:
            raise ValueError("mutual TLS needs the CA bundle clients' certificates must chain to (a root cert)")

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.cert, self.key) if self.root is None else (self.cert, self.key, self.root)


@dataclass(frozen=True)
class Material:
    """The bytes of a TlsConfig's files, checked to serve together (``read_material``)."""

    cert: bytes
    key: bytes
    root: bytes | None
    expiry_s: float  # the (first) certificate's notAfter, Unix seconds


def read_material(config: TlsConfig) -> Material:
    """The files' bytes, checked: each readable PEM, the key the certificate's, the root bundle loadable."""
    contents = []
    for path in config.files:
        try:
            contents.append(path.read_bytes())
        except OSError as exc:
            raise TlsError(f"cannot read {path}: {exc.strerror or exc}") from None
    from cryptography import x509  # here, not at import: 8 MB resident a server without TLS does not need

    try:
        expiry_s = x509.load_pem_x509_certificates(contents[0])[0].not_valid_after_utc.timestamp()
    except ValueError as exc:
        raise TlsError(f"{config.cert} is not a PEM certificate chain ({exc})") from None
    material = Material(contents[0], contents[1], contents[2] if config.root is not None else None, expiry_s)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(config.cert, config.key)
    except ssl.SSLError as exc:
        raise TlsError(f"{config.cert} and {config.key} are not a PEM certificate chain and its private key "
                       f"({exc.reason or exc})") from None
    if config.root is not None:
        try:
            context.load_verify_locations(cafile=str(config.root))
        except ssl.SSLError as exc:
            raise TlsError(f"{config.root} is not a PEM bundle of CA certificates ({exc.reason or exc})") from None
    return material


def _stamp(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...] | None:
    """What changes when a file is replaced: a Secret's update swaps a symlink, which stat follows."""
    try:
        return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in (os.stat(p) for p in paths))
    except OSError:
        return None  # a file missing for now (mid-update): the next check sees it


class CertificateFiles:
    """A TlsConfig's files, read at construction (raises ``TlsError``) and again by ``reload`` when they change."""

    def __init__(self, config: TlsConfig, what: str) -> None:
        self.config = config
        self.what = what  # "gRPC" or "REST", for the log
        self._stamp = _stamp(config.files)
        self.material = read_material(config)
        self._refused: object = None  # the stamp of files that did not load: logged once
        self.reloads = 0  # changed files loaded (ops/tls_metrics.py reads these three)
        self.reload_errors = 0

    @property
    def expiry_s(self) -> float:
        return self.material.expiry_s

    def reload(self) -> Material | None:
        """The files' new material when they changed and load; None when unchanged, or when they do not
        load (logged once per change; the material in use stays)."""
        stamp = _stamp(self.config.files)
        if stamp is None or stamp == self._stamp or stamp == self._refused:
            return None
        try:
            material = read_material(self.config)
        except TlsError as exc:
            self._refused = stamp
            self.reload_errors += 1
            log.warning("%s TLS certificate files changed but cannot be used, so the ones loaded before still "
                        "serve: %s", self.what, exc)
            return None
        self._stamp, self.material = stamp, material
        self.reloads += 1
        log.info("%s TLS certificate reloaded from %s", self.what, self.config.cert)
        return material


def _grpc_certificates(material: Material) -> Any:
    return grpc.ssl_server_certificate_configuration([(material.key, material.cert)], root_certificates=material.root)


@dataclass(frozen=True)
class ServerTls:
    """What the listeners serve TLS with: gRPC's credentials and REST's reloader (None: that one is plain)."""

    grpc: grpc.ServerCredentials | None
    http: "HttpTlsReloader | None"


def open_tls(grpc_config: TlsConfig | None, http_config: TlsConfig | None, reload_interval_s: float,
             registry: CollectorRegistry) -> ServerTls:
    """Both listeners' TLS, their certificates observed on ``registry`` (ops/tls_metrics.py); REST's files are
    checked every ``reload_interval_s`` from now on (on the running loop). Raises ``TlsError``."""
    listeners = {name: CertificateFiles(config, what) for name, config, what in
                 (("grpc", grpc_config, "gRPC"), ("http", http_config, "REST")) if config is not None}
    if listeners:
        metrics = TlsMetrics(registry)
        for name, files in listeners.items():
            metrics.observe(name, files)
    grpc_files, http_files = listeners.get("grpc"), listeners.get("http")
    return ServerTls(grpc_server_credentials(grpc_files) if grpc_files else None,
                     HttpTlsReloader.start(http_files, reload_interval_s) if http_files else None)


def grpc_server_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    """The gRPC listener's credentials. Rotated files serve the next connection."""
    config = files.config

    def fetch() -> Any:  # grpc calls it before each new connection's handshake
        try:
            material = files.reload()
        except Exception:  # never fail a handshake over the check itself: the certificate in use stays
            log.exception("checking the gRPC TLS certificate files failed")
            return None
        return None if material is None else _grpc_certificates(material)

    return grpc.dynamic_ssl_server_credentials(_grpc_certificates(files.material), fetch,
                                               require_client_authentication=config.mutual)


def peer_channel_credentials(config: TlsConfig) -> grpc.ChannelCredentials:
    """For one replica's calls to another (fleet mode's sequence forwarding): the peers' certificates are
    checked against ``root`` (the system's CAs without one); with mutual TLS this replica presents its own."""
    material = read_material(config)
    if config.mutual:
        return grpc.ssl_channel_credentials(material.root, material.key, material.cert)
    return grpc.ssl_channel_credentials(material.root)


def peer_channel(config: TlsConfig | None, server_name: str = "") -> Any:
    """What ``SequenceOwners`` opens a channel to a peer replica with: plain without ``config``; with it, TLS
    (``peer_channel_credentials``, read again for each new peer, so rotated files apply to new channels).
    ``server_name``: the name the peers' certificates are checked for, when it is not the address's host (a
    certificate issued for the Service's name, reached at a pod's IP)."""

    def channel(address: str, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        if config is None:
            return grpc.aio.insecure_channel(address, options=options)
        if server_name:
            options = [*options, ("grpc.ssl_target_name_override", server_name)]
        try:
            credentials = peer_channel_credentials(config)
        except TlsError as exc:  # the files changed since the start and no longer load: the caller may retry
            raise PeerUnreachable(f"cannot call replica {address} over TLS: {exc}") from None
        return grpc.aio.secure_channel(address, credentials, options=options)

    return channel


def describe(config: TlsConfig | None) -> str:
    """For the "listening on" log line."""
    if config is None:
        return ""
    return " (TLS, clients must present a certificate)" if config.mutual else " (TLS)"


def _load(context: ssl.SSLContext, config: TlsConfig) -> None:
    context.load_cert_chain(config.cert, config.key)
    if config.root is not None:
        context.load_verify_locations(cafile=str(config.root))


class HttpTlsReloader:
    """Checks the REST listener's files every ``interval_s`` and loads a change into its live context.

    The files are checked (``CertificateFiles.reload``) before they touch the context, so a bad change
    leaves it as it was. A context cannot forget a CA: a rotated root bundle adds to the ones REST trusts
    until the server restarts (gRPC's replaces them).
    """

    def __init__(self, context: ssl.SSLContext, files: CertificateFiles, interval_s: float) -> None:
        self.context = context
        self.files = files
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def start(cls, files: CertificateFiles, interval_s: float) -> "HttpTlsReloader":
        """The REST listener's context (``context``), its files checked every ``interval_s`` from now on (on the
        running loop; ``stop`` ends it)."""
        config = files.config
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        _load(context, config)
        if config.mutual:
            context.verify_mode = ssl.CERT_REQUIRED
        reloader = cls(context, files, interval_s)
        reloader._task = asyncio.get_running_loop().create_task(reloader._run())
        return reloader

    def check(self) -> bool:
        if self.files.reload() is None:
            return False
        _load(self.context, self.files.config)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.check()
            except Exception:  # the next check tries again; the context in use stays
                log.exception("reloading the REST TLS certificate failed")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

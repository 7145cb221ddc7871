"""The load generator's connections: TLS (``--tls``, ``--tls-ca``, ``--tls-cert``/``--tls-key``,
``--tls-server-name``) for servers that serve it, mutual TLS included, and headers sent with every call
(``--header``, e.g. the key of a restricted API). ``ClientTls`` and the headers are picklable: they travel to
the load-generator processes with each ``DriveSpec``."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import grpc


@dataclass(frozen=True)
class ClientTls:
    """``ca``: the CA bundle the servers' certificates are checked against (None: the system's); ``cert`` and
    ``key``: a client certificate for mutual TLS; ``server_name``: the name the certificates are checked for
    over gRPC, when it is not the target's host (a certificate for a Service's name, reached at an address)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--tls-cert and --tls-key go together: a client certificate and its private key")
        for flag, path in (("--tls-ca", self.ca), ("--tls-cert", self.cert), ("--tls-key", self.key)):
            if path is not None and not path.is_file():
                raise ValueError(f"{flag} {path}: no such file")

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        if self.cert is not None and self.key is not None:
            context.load_cert_chain(self.cert, self.key)
        return context


class _Headers:
    """Adds ``headers`` to the metadata of every call (installed only when there are some)."""

    def __init__(self, headers: Sequence[tuple[str, str]]) -> None:
        self._headers = [(name.lower(), value) for name, value in headers]  # gRPC metadata keys are lower case

    def _with_headers(self, details: Any) -> Any:
        return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), *self._headers))


# grpc.aio files each interceptor under the first kind it is: one class per kind of call.
class _UnaryHeaders(_Headers, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_headers(details), request)


class _StreamHeaders(_Headers, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._with_headers(details), requests)


def grpc_channel(target: str, tls: ClientTls | None, options: Sequence[tuple[str, Any]],
                 headers: Sequence[tuple[str, str]] = ()) -> grpc.aio.Channel:
    """A channel to ``target``: plain without ``tls``; ``headers`` go with every call."""
    interceptors: Any = [_UnaryHeaders(headers), _StreamHeaders(headers)] if headers else None
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
    if tls.server_name:
        options = [*options, ("grpc.ssl_target_name_override", tls.server_name)]
    return grpc.aio.secure_channel(target, tls.grpc_credentials(), options=list(options), interceptors=interceptors)


def parse_header(text: str) -> tuple[str, str]:
    """``NAME:VALUE`` (perf_analyzer's ``-H`` form; ``NAME=VALUE`` too); raises ValueError."""
    colon, equals = text.find(":"), text.find("=")
    cut = min(i for i in (colon, equals) if i >= 0) if colon >= 0 or equals >= 0 else -1
    name, value = (text[:cut].strip(), text[cut + 1:].strip()) if cut >= 0 else ("", "")
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"--header takes NAME:VALUE, a name of letters, digits, '-' and '_', got {text!r}")
    return name, value


def aiohttp_ssl(tls: ClientTls | None) -> "ssl.SSLContext | bool":
    """aiohttp's ``ssl`` for a connector: the context with ``tls``; True (its defaults) for plain http URLs."""
    return tls.ssl_context() if tls is not None else True


def http_base(target: str, tls: ClientTls | None) -> str:
    """``target``'s URL without a path: https with ``tls``."""
    return f"{'https' if tls is not None else 'http'}://{target}"


def tls_hint(tls: ClientTls | None) -> str:
    """What to add to a connection the server closed: the TLS flags it may be missing."""
    if tls is None:
        return " (if it serves TLS: --tls, or --tls-ca with its CA)"
    if tls.cert is None:
        return " (if it asks for a client certificate: --tls-cert and --tls-key)"
    return ""

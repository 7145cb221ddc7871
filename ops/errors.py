"""The one error hierarchy of fleetserve, with transport-neutral status codes.

Every layer raises a ``ServingError`` subclass; each transport maps ``code`` to
its own status in exactly one place (server/grpc_errors.py for gRPC). Messages
are for people: say what was wrong and what was expected.

Imports nothing from fleetserve.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any


class Code(enum.IntEnum):
    """Status codes; the values are gRPC's canonical codes (google.rpc.Code)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class ServingError(Exception):
    """Base of all errors a caller may see.

    ``message`` is shown to the caller as is; ``details`` carries structured
    context (model, version, tensor) for logs.
    """

    code: Code = Code.INTERNAL

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class InvalidInput(ServingError):
    """The request is malformed or does not match the model (INVALID_ARGUMENT)."""

    code = Code.INVALID_ARGUMENT


class ModelNotFound(ServingError):
    """No such model or version in the repository (NOT_FOUND)."""

    code = Code.NOT_FOUND


class RegionNotFound(ServingError):
    """No shared-memory region is registered under the name a request gives (NOT_FOUND)."""

    code = Code.NOT_FOUND


class AlreadyExists(ServingError):
    """The request would create what already exists: a shared-memory region's name (ALREADY_EXISTS)."""

    code = Code.ALREADY_EXISTS


class ModelNotReady(ServingError):
    """The model exists but cannot serve now: loading, unloading, failed (UNAVAILABLE)."""

    code = Code.UNAVAILABLE


class QueueFull(ServingError):
    """The scheduler refuses more work for now (RESOURCE_EXHAUSTED)."""

    code = Code.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServingError):
    """The request's deadline passed before it could be served (DEADLINE_EXCEEDED)."""

    code = Code.DEADLINE_EXCEEDED


class ShuttingDown(ServingError):
    """The server is shutting down and ends a call that would otherwise stay open (UNAVAILABLE)."""

    code = Code.UNAVAILABLE


class Cancelled(ServingError):
    """The caller went away before the request was served (CANCELLED)."""

    code = Code.CANCELLED


class BackendError(ServingError):
    """The execution backend failed while running a model (INTERNAL)."""

    code = Code.INTERNAL


class Restricted(ServingError):
    """The endpoint is restricted to requests carrying a header this one lacks (PERMISSION_DENIED)."""

    code = Code.PERMISSION_DENIED


class Unsupported(ServingError):
    """The request asks for something fleetserve does not implement (UNIMPLEMENTED)."""

    code = Code.UNIMPLEMENTED


class ConfigError(ServingError):
    """A model configuration or model file cannot be used (INVALID_ARGUMENT).

    Raised while loading; the model is then reported UNAVAILABLE with this message
    as its reason, and repository-control RPCs return it as INVALID_ARGUMENT.
    """

    code = Code.INVALID_ARGUMENT


def code_of(exc: BaseException) -> Code:
    """The outcome code of any exception raised while serving a request.

    ``ServingError`` carries its own; a cancelled task (the caller went away) is
    CANCELLED; anything else is a bug or an unexpected library error: INTERNAL.
    """
    if isinstance(exc, ServingError):
        return exc.code
    if isinstance(exc, asyncio.CancelledError):
        return Code.CANCELLED
    return Code.INTERNAL

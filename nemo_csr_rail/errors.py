"""Error types.

Every failure of a check is one of these, each with a stable ``kind`` (an :class:`ErrorKind`, a ``str`` whose value
is the kind's name). The rail layer turns them into a deliberate decision (``on_error``) and reports the kind in
metadata, metrics and logs, so an operator can tell "the guard was down" from "the guard said harmful" without
reading stack traces.
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(str, Enum):
    """Why a check could not run: the ``error_kind`` of metadata, audit records and the ``kind`` metric label.

    A ``str``: a member equals, hashes, formats and serialises to JSON as its value (``"guard_timeout"``)."""

    CONFIG_ERROR = "config_error"
    GUARD_UNAVAILABLE = "guard_unavailable"
    GUARD_TLS_ERROR = "guard_tls_error"
    GUARD_TIMEOUT = "guard_timeout"
    GUARD_HTTP_ERROR = "guard_http_error"
    GUARD_PROTOCOL_ERROR = "guard_protocol_error"
    VERDICT_PARSE_ERROR = "verdict_parse_error"
    INPUT_TOO_LONG = "input_too_long"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    #: a bug, or an error raised as the bare :class:`CsrError`: the check fails closed
    INTERNAL_ERROR = "internal_error"

    def __str__(self) -> str:  # the value, on every Python (3.12 changed str() and format() of mixed-in enums)
        return self.value

    def __format__(self, spec: str) -> str:
        return self.value.__format__(spec)


class CsrError(Exception):
    """Base class for everything this package raises on purpose."""

    kind: ErrorKind = ErrorKind.INTERNAL_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(CsrError, ValueError):
    """The plugin configuration is invalid; the message names the offending key."""

    kind = ErrorKind.CONFIG_ERROR

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"custom_data.nemo_csr_rail: {key}: {problem}" if key else problem)
        self.key = key


class GuardUnavailable(CsrError):
    """The guard server could not be reached (refused, DNS, reset, TLS)."""

    kind = ErrorKind.GUARD_UNAVAILABLE


class GuardTLSError(GuardUnavailable):
    """TLS failed (certificate not trusted, wrong host name): a retry cannot fix it, so none is made."""

    kind = ErrorKind.GUARD_TLS_ERROR


class GuardTimeout(CsrError):
    """The check did not finish within ``timeout_s`` (retries included)."""

    kind = ErrorKind.GUARD_TIMEOUT


class GuardHTTPError(CsrError):
    """The guard server answered with an HTTP error status."""

    kind = ErrorKind.GUARD_HTTP_ERROR

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"guard server answered HTTP {status}: {message}")
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.status in (408, 429, 500, 502, 503, 504)


class GuardProtocolError(CsrError):
    """The guard server answered 200 with a body that is not a usable chat completion."""

    kind = ErrorKind.GUARD_PROTOCOL_ERROR


class VerdictParseError(CsrError):
    """The model's output did not contain exactly one well-formed verdict for what was asked."""

    kind = ErrorKind.VERDICT_PARSE_ERROR


class InputTooLong(CsrError):
    """The conversation does not fit the guard model's context window."""

    kind = ErrorKind.INPUT_TOO_LONG


class EngineUnavailable(CsrError):
    """The embedded engine cannot run here (missing extra, missing weights)."""

    kind = ErrorKind.ENGINE_UNAVAILABLE

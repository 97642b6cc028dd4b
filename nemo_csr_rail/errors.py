"""Error types.

Every failure of a check is one of these, each with a stable ``kind`` string. The rail layer turns them into a
deliberate decision (``on_error``) and reports the kind in metadata and logs, so an operator can tell "the guard
was down" from "the guard said harmful" without reading stack traces.
"""

from __future__ import annotations


class CsrError(Exception):
    """Base class for everything this package raises on purpose."""

    kind: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(CsrError, ValueError):
    """The plugin configuration is invalid; the message names the offending key."""

    kind = "config_error"

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"custom_data.nemo_csr_rail: {key}: {problem}" if key else problem)
        self.key = key


class GuardUnavailable(CsrError):
    """The guard server could not be reached (refused, DNS, reset, TLS)."""

    kind = "guard_unavailable"


class GuardTLSError(GuardUnavailable):
    """TLS failed (certificate not trusted, wrong host name): a retry cannot fix it, so none is made."""

    kind = "guard_tls_error"


class GuardTimeout(CsrError):
    """The check did not finish within ``timeout_s`` (retries included)."""

    kind = "guard_timeout"


class GuardHTTPError(CsrError):
    """The guard server answered with an HTTP error status."""

    kind = "guard_http_error"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"guard server answered HTTP {status}: {message}")
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.status in (408, 429, 500, 502, 503, 504)


class GuardProtocolError(CsrError):
    """The guard server answered 200 with a body that is not a usable chat completion."""

    kind = "guard_protocol_error"


class VerdictParseError(CsrError):
    """The model's output did not contain exactly one well-formed verdict for what was asked."""

    kind = "verdict_parse_error"


class InputTooLong(CsrError):
    """The conversation does not fit the guard model's context window."""

    kind = "input_too_long"


class EngineUnavailable(CsrError):
    """The embedded engine cannot run here (missing extra, missing weights)."""

    kind = "engine_unavailable"

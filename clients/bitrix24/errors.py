"""What can go wrong talking to Bitrix24, sorted by what a caller may safely do about it."""

from __future__ import annotations


class Bitrix24Error(Exception):
    """Bitrix24 answered with an error (``{"error": ..., "error_description": ...}``)."""

    def __init__(self, code: str, description: str = "", status: int = 200) -> None:
        self.code = code
        self.description = description
        self.status = status
        super().__init__(f"{code}: {description}" if description else code)


class QueryLimitExceeded(Bitrix24Error):
    """503 ``QUERY_LIMIT_EXCEEDED``: the portal's leaky bucket refused the request.

    Refused before anything ran, so retrying is safe even for a create.
    """


class OperationTimeLimit(Bitrix24Error):
    """429 ``OPERATION_TIME_LIMIT``: a method used up its operating time for the window.

    ``reset_at`` (unix seconds) is when the server frees part of that time, if it said.
    """

    def __init__(self, code: str, description: str, status: int, reset_at: float | None) -> None:
        super().__init__(code, description, status)
        self.reset_at = reset_at


class AmbiguousFailure(Exception):
    """No usable answer (a network error, a non-JSON error page, a timeout).

    The request may or may not have run on the server: a read can be retried, a create must
    not be (look up first).
    """

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        # False when the connection was never made: then nothing ran and a retry is safe.
        self.sent = sent


# Per-command error codes that mean "not now" rather than "never".
TRANSIENT_CODES = frozenset(
    {"QUERY_LIMIT_EXCEEDED", "OPERATION_TIME_LIMIT", "INTERNAL_SERVER_ERROR", "OVERLOAD_LIMIT"}
)

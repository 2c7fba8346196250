"""Where failures become HTTP answers: each MmsearchError's own status (errors.py), the JSON
error body (ErrorOut) and the exception handlers registered next to it (an SQLite error
is first said as the MmsearchError it means, by retrieval/sqlite_errors.py)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import (
    DiskFullError,
    ImageDecodeError,
    IndexBusyError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    MmsearchError,
    ModelUnavailableError,
    StorageIOError,
)
from ..sqlite_errors import classify_sqlite_error
from .limits import Overloaded
from .models import ErrorOut

logger = logging.getLogger(__name__)


# Server-side states a client can wait out (503, 507): said as they are, not as a 500.
_UNAVAILABLE = (
    IndexNotFoundError,
    IndexCorruptError,
    IndexMismatchError,
    IndexBusyError,
    ModelUnavailableError,
    StorageIOError,
    DiskFullError,
)
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "too_large",
    429: "overloaded",
    431: "too_large",
    503: "not_ready",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut}
    for status in (400, 401, 403, 404, 408, 413, 422, 429, 431, 500, 503, 507)
}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The JSON body of every error answer (ErrorOut)."""
    body = ErrorOut(error=code, message=message, **extra).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _mmsearch_error(request: Request, err: MmsearchError) -> JSONResponse:
    status, code = err.http_status, err.http_code
    if status >= 500 and not isinstance(err, _UNAVAILABLE):
        logger.error("unexpected %s", type(err).__name__, exc_info=err)
        return error_response(500, "internal", "internal error; the server log has the details")
    headers = {"Retry-After": "5"} if isinstance(err, IndexBusyError) else None
    reason = err.reason if isinstance(err, ImageDecodeError) else None
    return error_response(status, code, redact(str(err), request), headers, reason=reason)


def redact(message: str, request: Request | None) -> str:
    """A message without the server's index directory in it (a client has no use for the
    server's paths, and they tell an attacker the layout); the log keeps the full text."""
    directory = getattr(request.app.state, "index_directory", None) if request else None
    if directory is None:
        return message
    for spelling in {str(directory), str(Path(directory).absolute())}:
        message = message.replace(spelling, "the index")
    return message


def http_error(_: Request | None, err: HTTPException) -> JSONResponse:
    code = HTTP_CODES.get(err.status_code, "error")
    return error_response(err.status_code, code, str(err.detail), err.headers)


def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
    details = [
        {
            "loc": [str(part) for part in e.get("loc", ())],
            "msg": e.get("msg"),
            "type": e.get("type"),
        }
        for e in err.errors()
    ]
    message = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details)
    # Unparseable JSON is a malformed request (400); a well-formed one with bad values is 422.
    malformed = all(d["type"] == "json_invalid" for d in details)
    status, code = (400, "bad_request") if malformed else (422, "validation")
    return error_response(status, code, message or "invalid request", details=details)


def overloaded(_: Request | None, err: Overloaded) -> JSONResponse:
    return error_response(429, "overloaded", str(err), {"Retry-After": str(err.retry_after_s)})


def install_error_handlers(app: FastAPI, directory: Path | None = None) -> None:
    """Register the handlers; `directory` is the served index's: named in the log of SQLite's
    errors, never in an answer."""
    app.state.index_directory = directory

    def sqlite_error(request: Request, err: sqlite3.DatabaseError) -> JSONResponse:
        logger.warning("SQLite error on the catalog in %s", directory, exc_info=err)
        return _mmsearch_error(request, classify_sqlite_error(err, directory))

    # Starlette types handlers as taking any Exception; each of these gets only its own kind.
    app.add_exception_handler(MmsearchError, _mmsearch_error)  # type: ignore[arg-type]
    app.add_exception_handler(sqlite3.DatabaseError, sqlite_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Overloaded, overloaded)  # type: ignore[arg-type]


def internal_error() -> JSONResponse:
    return error_response(500, "internal", "internal error; the server log has the traceback")

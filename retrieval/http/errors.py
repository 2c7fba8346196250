"""Where failures become HTTP answers: the one MmsearchError -> status table (ERROR_STATUS),
the JSON error body (ErrorOut) and the exception handlers registered next to it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import (
    ImageDecodeError,
    ImageTooLargeError,
    IndexBusyError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    InputFileError,
    InvalidQueryError,
    ItemNotFoundError,
    MmsearchError,
    ModelUnavailableError,
)
from .limits import Overloaded
from .models import ErrorOut

logger = logging.getLogger(__name__)


ERROR_STATUS: dict[type[MmsearchError], tuple[int, str]] = {
    InvalidQueryError: (422, "invalid_query"),
    ItemNotFoundError: (404, "not_found"),
    InputFileError: (422, "invalid_input"),
    ImageDecodeError: (422, "image_decode"),
    ImageTooLargeError: (413, "too_large"),
    IndexNotFoundError: (503, "index_unavailable"),
    IndexCorruptError: (503, "index_unavailable"),
    IndexMismatchError: (503, "index_unavailable"),
    IndexBusyError: (503, "index_busy"),
    ModelUnavailableError: (503, "model_unavailable"),
}
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "too_large",
    429: "overloaded",
    503: "not_ready",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut} for status in (400, 401, 403, 404, 408, 413, 422, 429, 500, 503)
}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The JSON body of every error answer (ErrorOut)."""
    body = ErrorOut(error=code, message=message, **extra).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _mmsearch_error(_: Request, err: MmsearchError) -> JSONResponse:
    for kind in type(err).__mro__:
        if kind in ERROR_STATUS:
            status, code = ERROR_STATUS[kind]
            break
    else:
        logger.error("unexpected %s", type(err).__name__, exc_info=err)
        return error_response(500, "internal", "internal error; the server log has the details")
    headers = {"Retry-After": "5"} if isinstance(err, IndexBusyError) else None
    reason = err.reason if isinstance(err, ImageDecodeError) else None
    return error_response(status, code, str(err), headers, reason=reason)


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


def install_error_handlers(app: FastAPI) -> None:
    # Starlette types handlers as taking any Exception; each of these gets only its own kind.
    app.add_exception_handler(MmsearchError, _mmsearch_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Overloaded, overloaded)  # type: ignore[arg-type]


def internal_error() -> JSONResponse:
    return error_response(500, "internal", "internal error; the server log has the traceback")

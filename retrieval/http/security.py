"""API-key security: `X-API-Key: KEY` or `Authorization: Bearer KEY`, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

# Module-level, so the string annotations below (PEP 563) resolve when FastAPI reads them.
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)
BEARER = HTTPBearer(auto_error=False)
ApiKey = Annotated[str | None, Security(API_KEY_HEADER)]
BearerToken = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


def api_key_dependency(api_key: str) -> Callable[[str | None, Any], None]:
    """A dependency accepting `X-API-Key: KEY` or `Authorization: Bearer KEY`, else 401."""
    expected = api_key.encode()

    def require_key(key: ApiKey, token: BearerToken) -> None:
        given = key if key is not None else (token.credentials if token else None)
        if given is None:
            raise HTTPException(
                401,
                "this server needs an API key: send `X-API-Key: KEY` or "
                "`Authorization: Bearer KEY`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        # Constant-time, so response timing does not reveal how much of a guess was right.
        if not hmac.compare_digest(given.encode(), expected):
            raise HTTPException(
                401, "the API key is not valid", headers={"WWW-Authenticate": "Bearer"}
            )

    return require_key

"""A request-head timeout for uvicorn's h11 protocol: a connection that has not sent a complete
request line and headers within `seconds` of opening (or of its previous answer) is closed.

uvicorn (0.55) times out only idle keep-alive connections *after* an answer; a fresh connection
that sends nothing, or sends its headers a byte at a time (slowloris), is held forever, and
enough of them exhaust the process's file descriptors. Hand-written because uvicorn offers no
option for it; the subclass only arms a timer and closes the transport, so h11 still does all
the parsing."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


def head_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """H11Protocol that closes connections whose request head takes over `seconds`."""

    class HeadTimeoutH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(seconds, self._head_timed_out, self.cycle)

        def _head_timed_out(self, cycle_when_armed: Any) -> None:
            # A new cycle means a request head arrived; an unfinished one is the app's to time.
            waiting = cycle_when_armed is None or cycle_when_armed.response_complete
            if self.cycle is cycle_when_armed and waiting and not self.transport.is_closing():
                self.transport.close()

    return HeadTimeoutH11Protocol

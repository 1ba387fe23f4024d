"""The count of tagging requests on their way to a worker, which the batching workers read.

A request counts from the moment its route is matched (before its body is
read) until its job is queued, or it fails. :class:`CountedRoute` is the
route class of the tagging routes that does the counting; the count itself is
the app's :class:`IncomingRequests` (``app.state.context.incoming``).
"""
from __future__ import annotations

from typing import Any, Callable, Coroutine, Optional

from fastapi import Request, Response
from fastapi.routing import APIRoute


class IncomingRequests:
    """Tagging requests received but not yet handed to a worker (uploading, parsing, decoding).

    Workers read the count to decide whether waiting for a fuller batch can pay off.
    Changed only on the event loop; the workers only read an int.
    """

    def __init__(self):
        self.count = 0

    def __call__(self) -> int:
        return self.count

    def enter(self) -> "IncomingTicket":
        self.count += 1
        return IncomingTicket(self)


class IncomingTicket:
    def __init__(self, owner: IncomingRequests):
        self.owner = owner
        self.open = True

    def release(self) -> None:
        if self.open:
            self.open = False
            self.owner.count -= 1


class CountedRoute(APIRoute):
    """An APIRoute whose requests hold an :class:`IncomingTicket` from before the body is read."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def counted(request: Request) -> Response:
            ticket = request.app.state.context.incoming.enter()
            request.state.incoming_ticket = ticket
            try:
                return await handler(request)
            finally:
                ticket.release()

        return counted


def incoming_ticket(request: Request) -> Optional[IncomingTicket]:
    """The ticket of this tagging request (a dependency of the tagging routes)."""
    return getattr(request.state, "incoming_ticket", None)

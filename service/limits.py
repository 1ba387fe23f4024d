"""Request body limits, one per route that takes a body, checked before the body is read.

:class:`BodyLimitMiddleware` knows the routes that take a body (method and
path) and only those have a limit, each its own, which the 413 names. A
request for any other route, an unknown one or one with a wrong method goes
on untouched: the router answers 404 or 405 without reading the body,
whatever its size. A Content-Length over the limit is refused at once; a
streamed body (no Content-Length) is counted as it arrives and cut off at the
limit.

(Starlette's RequestBodyLimitMiddleware, behind FastAPI's ``max_body_size``,
answers a too-large Content-Length with a plain-text "Content Too Large"
whatever the route would have sent; the service's errors are JSON.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response, human_size
from .settings import Settings

# Room for multipart boundaries and the small form fields next to the file(s).
MULTIPART_OVERHEAD = 256 * 1024


@dataclass(frozen=True)
class BodyLimit:
    bytes: int  # largest body the route accepts
    why: str  # how the limit is made up, in the settings' names

    def message(self, where: str, size: int, so_far: bool = False) -> str:
        sent = f"{human_size(size)}, {size} bytes{' so far' if so_far else ''}"
        return f"the request body ({sent}) exceeds the {human_size(self.bytes)} limit of {where} ({self.bytes} bytes: {self.why})"


def body_limits(settings: Settings) -> Dict[str, BodyLimit]:
    """Path of each POST route that takes a body -> its limit."""
    one, files = settings.max_upload_bytes, settings.max_batch_files
    single = BodyLimit(one + MULTIPART_OVERHEAD, f"one file of at most MAX_UPLOAD_BYTES={one} bytes ({human_size(one)}) plus {human_size(MULTIPART_OVERHEAD)} of form fields")
    return {
        "/v1/tag": single,
        "/v1/embed": single,
        "/v1/tag/batch": BodyLimit(
            one * files + MULTIPART_OVERHEAD,
            f"MAX_BATCH_FILES={files} files of at most MAX_UPLOAD_BYTES={one} bytes ({human_size(one)}) each plus {human_size(MULTIPART_OVERHEAD)} of form fields",
        ),
    }


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limits: Mapping[str, BodyLimit]):
        self.app = app
        self.limits = dict(limits)  # POST path -> limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope.get("path", "")) if scope["type"] == "http" and scope.get("method") == "POST" else None
        if limit is None:  # takes no body, or unknown route / wrong method: the router answers without reading it
            await self.app(scope, receive, send)
            return
        where = f"POST {scope['path']}"
        declared = _content_length(scope)
        if declared is not None and declared > limit.bytes:
            await error_response(413, "payload_too_large", limit.message(where, declared))(scope, receive, send)
            return
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.bytes:
                    # Raised inside body parsing; FastAPI hands HTTPExceptions to service.errors.
                    raise StarletteHTTPException(413, limit.message(where, received, so_far=True))
            return message

        await self.app(scope, counting_receive, send)


def _content_length(scope: Scope) -> Optional[int]:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None

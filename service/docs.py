"""The API docs: Swagger UI at /docs and ReDoc at /redoc, from assets packaged with fastapi-offline.

``fastapi_offline.FastAPIOffline`` serves both pages and their scripts from
the package (mounted at :data:`DOCS_ASSETS_URL`), so they work with no
network. ReDoc's bundle still points its sidebar badge at a CDN image;
:class:`DocsContentSecurityPolicy` gives the two pages a Content-Security-Policy
that lets them load from this service only, so the browser never asks
anything of another host.
"""
from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS_ASSETS_URL = "/static-offline-docs"  # where fastapi-offline mounts Swagger UI's and ReDoc's files
DOCS_PAGES = frozenset({"/docs", "/redoc"})
# Inline script/style: the pages' own start-up script and the styles both UIs inject. blob: workers:
# ReDoc's search index. data: images: Swagger UI's icons.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'self'"
)


class DocsContentSecurityPolicy:
    """Adds :data:`CONTENT_SECURITY_POLICY` to the responses of the docs pages."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in DOCS_PAGES:
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            await send(message)

        await self.app(scope, receive, send_with_policy)

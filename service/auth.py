"""The API key check, in front of everything (pure ASGI, before any of the body is read).

With ``API_KEY`` set, every request but those for the public paths (health
probes, the web page and its files, /docs, /redoc, /openapi.json and their
assets) needs ``Authorization: Bearer <key>``; the refusal is the service's
JSON error, sent from here, so an unauthenticated upload never reaches the
multipart parser.
"""
from __future__ import annotations

import hmac
from typing import Collection, Tuple

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str, public_paths: Collection[str], public_prefixes: Tuple[str, ...]):
        self.app = app
        self.key = api_key.encode()
        self.public_paths = frozenset(public_paths)
        self.public_prefixes = tuple(public_prefixes)

    def _authorised(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        if path in self.public_paths or path.startswith(self.public_prefixes):
            return True
        header = ""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._authorised(scope):
            response = error_response(
                401, "unauthorized", "this route needs an API key: send 'Authorization: Bearer <key>'", {"WWW-Authenticate": 'Bearer realm="audio_dcls"'}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

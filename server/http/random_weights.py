"""`X-Perceiver-Random-Weights: true` on every answer of a server whose models are all randomly initialised (the
demo profile): task answers, errors, probes, and what the middleware or the connection guard answer on their own,
so no answer of such a server can be taken for a real model's.

A server that mixes real and random models marks only its random models' answers (server/http/exchange.py).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.settings import Settings

HEADER = "X-Perceiver-Random-Weights"
RAW_HEADER = (HEADER.lower().encode("latin-1"), b"true")


def random_weights_only(settings: Settings) -> bool:
    models = settings.models.values()
    return bool(models) and all(spec.random_weights for spec in models)


class RandomWeightsMiddleware:
    """The outermost middleware: adds the header to every HTTP answer that does not carry it yet."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if all(name.lower() != RAW_HEADER[0] for name, _ in headers):
                    message = {**message, "headers": [*headers, RAW_HEADER]}
            await send(message)

        await self.app(scope, receive, marked)

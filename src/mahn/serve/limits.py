"""A limit on the size of request bodies: larger ones get 413 before the application reads them."""

from __future__ import annotations

import orjson

MAX_BODY = 1 << 20  # 1 MiB: a batch of 256 requests with long histories fits many times over
MAX_UPLOAD = 10 << 20  # 10 MiB: POST /items/upload carries one image file
LARGER = {"/items/upload": MAX_UPLOAD}  # paths whose bodies may pass MAX_BODY, and their own limit


class BodyLimit:
    """Pure ASGI middleware: read at most `limit` bytes of an HTTP request body, then hand it on whole.

    A Content-Length above the limit is refused before a byte is read; a chunked body is refused as soon
    as it passes the limit. The application then sees the buffered body as one message.
    """

    def __init__(self, app, limit: int = MAX_BODY, larger: dict[str, int] | None = None):
        self.app, self.limit, self.larger = app, limit, LARGER if larger is None else larger

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope.get("path", ""), self.limit)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self.refuse(send, 413 if length.isdigit() else 400, limit)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self.refuse(send, 413, limit)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()  # after the body: wait for the disconnect
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def refuse(self, send, status: int, limit: int) -> None:
        detail = (f"request body is larger than the limit of {limit} bytes" if status == 413
                  else "bad Content-Length header")
        payload = orjson.dumps({"detail": detail})
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})

"""The HTTP receiver of the webhook benchmark (an ASGI app under uvicorn): answers every POST
204 at once and counts them; GET /count says how many it took."""

from __future__ import annotations

from typing import Any

_count = 0


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _count
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the whole body, as a real receiver would
        message = await receive()
        more = message.get("more_body", False)
    if scope["method"] == "GET":
        body = str(_count).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    _count += 1
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})

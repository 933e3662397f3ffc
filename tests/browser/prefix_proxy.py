"""A minimal reverse proxy that serves an upstream app under a path prefix (HTTP and WebSocket), like nginx's
`location /prefix/ { proxy_pass http://upstream/; }`. Test-only: no streaming bodies, no header rewriting."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import httpx
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length", "host"}


def make_proxy(prefix: str, upstream: str) -> Starlette:
    """`prefix` like "/sdxs"; `upstream` like "http://127.0.0.1:7860"."""
    client = httpx.AsyncClient(base_url=upstream, timeout=30)
    ws_upstream = upstream.replace("http", "ws", 1)

    async def http(request: Request) -> Response:
        path = request.url.path[len(prefix):] or "/"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        reply = await client.request(request.method, path, params=request.query_params, headers=headers,
                                     content=await request.body())
        out = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_HEADERS}
        return Response(reply.content, reply.status_code, out)

    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        path = socket.url.path[len(prefix):]
        async with websockets.connect(ws_upstream + path, max_size=None) as upstream_ws:

            async def down() -> None:
                async for message in upstream_ws:
                    if isinstance(message, bytes):
                        await socket.send_bytes(message)
                    else:
                        await socket.send_text(message)
                await socket.close(upstream_ws.close_code or 1000)

            task = asyncio.create_task(down())
            with contextlib.suppress(WebSocketDisconnect, websockets.ConnectionClosed):
                while True:
                    message = await socket.receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    if message.get("bytes") is not None:
                        await upstream_ws.send(message["bytes"])
                    elif message.get("text") is not None:
                        await upstream_ws.send(message["text"])
            task.cancel()

    return Starlette(routes=[WebSocketRoute(prefix + "/{path:path}", ws),
                             Route(prefix + "/{path:path}", http, methods=["GET", "POST", "HEAD"])])


class ProxyServer:
    """Run the proxy on a free loopback port in a thread."""

    def __init__(self, prefix: str, upstream: str, port: int):
        self.server = uvicorn.Server(uvicorn.Config(make_proxy(prefix, upstream), host="127.0.0.1", port=port,
                                                   log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}{prefix}/"

    def __enter__(self) -> ProxyServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(5)

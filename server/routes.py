"""The ASGI app: its routes and lifespan, and the uvicorn server that runs it (`python app.py` is the command line).

The model loads on a background thread started by the lifespan; until it is ready `/`, `/healthz`, `/readyz` and
`/config.json` answer and WebSocket clients are told to come back (docs/protocol.md).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.routing import Mount

from sdxs.params import GenerationParams
from server.config import ServerConfig
from server.connection import Connection
from server.engine import Engine
from server.protocol import FEATURES, PROTOCOL_VERSION
from server.serving import GRACEFUL_S, Server
from server.state import AppState

FRONTEND = Path(__file__).resolve().parents[1] / "frontend"


def create_app(config: ServerConfig, wrap_pipeline: Callable[[Engine], Engine] | None = None) -> FastAPI:
    """Build the ASGI app; `wrap_pipeline` is a test hook applied to each loaded engine."""
    state = AppState(config, wrap_pipeline)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start_loading()
        yield
        await state.close_connections(0)  # server.serving.Server did this already; for any other ASGI server
        state.shutdown()

    # no root_path here: FastAPI deprecated its own; the server's (uvicorn_options) puts it in every request's scope
    app = FastAPI(title="SDXS real-time", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.sdxs = state

    # Gradio first, so that /config.json knows whether it is there; the page's static files last (they take "/")
    gradio_mounted = config.gradio and _mount_gradio(app, state)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        return JSONResponse({**state.loading, "devices": state.devices}, status_code=200 if state.ready else 503)

    @app.get("/config.json")
    def config_json() -> dict:
        model = state.model_info
        return {"protocol_version": PROTOCOL_VERSION, "ws_path": "ws", "loading": state.loading,
                "model": model, "limits": config.limits(model["size"] if model else config.resolution or 0),
                "schema": GenerationParams.model_json_schema(), "features": list(FEATURES), "gradio": gradio_mounted,
                "live": state.live}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await Connection(websocket, state).run()

    if FRONTEND.is_dir():
        app.mount("/", StaticFiles(directory=FRONTEND, html=True), name="frontend")
    return app


def _mount_gradio(app: FastAPI, state: AppState) -> bool:
    """Mount the optional Gradio UI (server/gradio_ui.py, owned by the frontend) at /gradio."""
    if importlib.util.find_spec("server.gradio_ui") is None:
        return False
    import gradio as gr

    from server.gradio_ui import build_gradio

    gr.mount_gradio_app(app, build_gradio(state), path="/gradio")
    gradio_app: Any = next(route.app for route in app.routes if isinstance(route, Mount) and route.path == "/gradio")
    # Gradio's heartbeat streams (one per open Gradio tab or gradio_client) end when this event is set, as Gradio's
    # own launch() does on close; otherwise each would hold the shutdown until uvicorn's graceful timeout
    state.stop_hooks.append(gradio_app.stop_event.set)

    @app.get("/gradio", include_in_schema=False)
    def gradio_slash() -> RedirectResponse:  # the mount answers /gradio/ only; a relative target keeps proxy prefixes
        return RedirectResponse("gradio/", status_code=307)

    return True


def uvicorn_options(config: ServerConfig) -> dict:
    """uvicorn settings: the transport cuts messages over 4x the protocol limit (close 1009); the app answers the
    ones in between with `message_too_big`. No per-message deflate: JPEG/WebP do not compress. `--root-path` (a
    prefix a proxy strips) is the server's setting, as FastAPI asks."""
    return {"host": config.host, "port": config.port, "log_level": config.log_level, "root_path": config.root_path,
            "ws_max_size": 4 * config.max_message_bytes, "ws_per_message_deflate": False,
            "proxy_headers": config.forwarded_allow_ips is not None,
            "forwarded_allow_ips": config.forwarded_allow_ips, "timeout_graceful_shutdown": GRACEFUL_S}


def make_server(app: FastAPI, **options: Any) -> Server:
    """The uvicorn server for `app` (built by create_app): says goodbye on shutdown (server/serving.py)."""
    return Server(uvicorn.Config(app, **options), app.state.sdxs)



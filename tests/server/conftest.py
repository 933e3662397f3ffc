"""Fixtures for the server tests: the main server (module-scoped) with a fault-injecting pipeline wrapper."""

from __future__ import annotations

import asyncio

import pytest
from server_harness import FaultyPipe, RunningServer, tiny_config


@pytest.fixture(scope="module")
def main_server(tiny_model_dir):
    """The main server; `early` records what /healthz, /readyz and /ws said while the model was loading."""
    server = RunningServer(tiny_config(tiny_model_dir), wrap=FaultyPipe).start()
    server.early = {"healthz": server.get("/healthz"), "readyz": server.get("/readyz"),
                    "ws": asyncio.run(_connect_early(server.url))}
    server.wait_ready()
    yield server
    server.stop()


async def _connect_early(url: str) -> tuple[list[dict], int | None]:
    from server.client import Client

    client = await Client.open(url, hello=False)
    code = await client.closed(timeout=5)
    return client.messages, code

"""Starting the server: model choice, load failures (retry, then exit 1), option parsing, the /gradio address."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import pytest
from fastapi.exceptions import FastAPIDeprecationWarning
from server_harness import RunningServer, tiny_config

from server import state as state_module
from server.config import parse_config
from server.routes import create_app, uvicorn_options

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate, timeout: float = 55.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_an_empty_controlnet_variable_means_none():
    assert parse_config([], env={"SDXS_CONTROLNET": ""}).controlnet == "none"
    assert parse_config(["--controlnet", " None "], env={}).controlnet == "none"
    assert parse_config([], env={}).controlnet == "auto"


def test_the_model_defaults_to_auto():
    assert parse_config([], env={}).model == "auto"


def test_an_unreachable_model_is_retried_then_reported_and_stops_the_server(monkeypatch):
    monkeypatch.setattr(state_module, "LOAD_RETRY_S", 0.05)
    stops = []
    server = RunningServer(tiny_config("IDKiro/no-such-model", load_retries=2))
    server.state.on_load_failed = lambda: stops.append(time.monotonic())
    attempts = []
    real_load = state_module.load_pipeline
    monkeypatch.setattr(state_module, "load_pipeline", lambda *a: (attempts.append(1), real_load(*a))[1])
    server.start()
    try:
        assert wait_for(lambda: stops)
        loading = server.get("/readyz").json()
        assert len(attempts) == 3 and len(stops) == 1
        assert loading["stage"] == "failed" and "hf download IDKiro/no-such-model" in loading["error"]
    finally:
        server.stop()


def test_a_folder_that_is_no_model_fails_at_once_without_retries(tmp_path, monkeypatch):
    monkeypatch.setattr(state_module, "LOAD_RETRY_S", 0.05)
    attempts = []
    real_load = state_module.load_pipeline
    monkeypatch.setattr(state_module, "load_pipeline", lambda *a: (attempts.append(1), real_load(*a))[1])
    server = RunningServer(tiny_config(tmp_path, load_retries=5)).start()
    try:
        assert wait_for(lambda: server.state.loading["stage"] == "failed")
        loading = server.get("/readyz").json()
        assert "not a diffusers pipeline folder" in loading["error"] and len(attempts) == 1
    finally:
        server.stop()


def test_app_py_exits_with_status_1_when_the_model_cannot_load(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "app.py", "--model", "IDKiro/no-such-model", "--load-retries", "0",
                           "--host", "127.0.0.1", "--port", "0", "--gradio", "false"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=50)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "hf download IDKiro/no-such-model" in proc.stderr and time.monotonic() - started < 50


@pytest.mark.parametrize("prefix", ["", "/sdxs"])
def test_gradio_answers_without_the_trailing_slash_and_builds_its_links_with_the_root_path(tiny_model_dir, prefix):
    server = RunningServer(tiny_config(tiny_model_dir, gradio=True, root_path=prefix)).start()
    try:
        response = httpx.get(f"{server.http}/gradio", follow_redirects=False, timeout=10)
        assert response.status_code in (301, 302, 307, 308) and response.headers["location"] == "gradio/"
        page = httpx.get(f"{server.http}/gradio/", timeout=30)  # as a proxy that strips the prefix asks for it
        assert page.status_code == 200 and f'"root":"{server.http}{prefix}/gradio"' in page.text
    finally:
        server.stop()


def test_the_root_path_is_the_servers_setting_not_fastapis_deprecated_one(tiny_model_dir):
    config = tiny_config(tiny_model_dir, root_path="/sdxs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_app(config)
    assert [str(w.message) for w in caught if issubclass(w.category, FastAPIDeprecationWarning)] == []
    assert uvicorn_options(config)["root_path"] == "/sdxs"  # uvicorn puts it in every request's scope


def test_the_app_listens_on_this_machine_only_unless_told_or_on_a_space():
    assert parse_config([], env={}).host == "127.0.0.1"
    assert uvicorn_options(parse_config([], env={}))["host"] == "127.0.0.1"
    assert parse_config(["--host", "0.0.0.0"], env={}).host == "0.0.0.0"  # the LAN, on purpose
    assert parse_config([], env={"SDXS_HOST": "0.0.0.0"}).host == "0.0.0.0"
    space = {"SPACE_ID": "someone/sdxs-live"}  # Hugging Face sets it in every Space, whose proxy needs 0.0.0.0
    assert parse_config([], env=space).host == "0.0.0.0"
    assert parse_config([], env={**space, "SDXS_HOST": "127.0.0.1"}).host == "127.0.0.1"
    assert parse_config(["--host", "127.0.0.1"], env=space).host == "127.0.0.1"

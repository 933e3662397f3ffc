"""The page on a ZeroGPU Space (issue 18, item 3): no live stream, a reason and a way to the Gradio tabs.  The app runs
with a fake `spaces` package on its path and SPACES_ZERO_GPU=true; its GPU decorator leaves a mark per call."""

from __future__ import annotations

import os

import pytest
from browser_helpers import wait_status

FAKE_SPACES = """
import functools, os, pathlib

def GPU(duration=60):
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with open(pathlib.Path(os.environ["FAKE_SPACES_LOG"]), "a") as log:
                log.write(f"{fn.__name__} {duration}\\n")
            return fn(*args, **kwargs)
        return wrapper
    return decorate
"""


@pytest.fixture(scope="module")
def zero_app(app_factory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fake-spaces")
    (folder / "spaces").mkdir()
    (folder / "spaces" / "__init__.py").write_text(FAKE_SPACES)
    extra = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])),
        "SPACES_ZERO_GPU": "true",
        "FAKE_SPACES_LOG": str(folder / "calls.log"),
    }
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)  # AppProcess passes os.environ to app.py when it starts
    try:
        app = app_factory()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    app.calls = folder / "calls.log"
    return app


def test_the_page_explains_there_is_no_live_stream_and_offers_the_gradio_tabs(zero_app, open_page):
    page = open_page(zero_app.url)
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.wait_for_function("() => /dedicated GPU/.test(document.getElementById('notice-text').textContent)")
    assert page.is_visible("#notice-action") and "Gradio" in page.inner_text("#notice-action")
    wait_status(page, "No live stream")
    with page.expect_response("**/config.json"):
        page.click("#start")  # the page asks config.json again, explains again and connects nothing
    page.wait_for_function("() => document.getElementById('start').getAttribute('aria-pressed') === 'false'")
    wait_status(page, "No live stream")
    assert "dedicated GPU" in page.inner_text("#notice-text") and sockets == []
    page.click("#notice-action")
    page.wait_for_url("**/gradio/**")
    assert not page.errors


def test_gradio_endpoints_run_under_the_gpu_decorator(zero_app, tmp_path):
    from gradio_client import Client

    client = Client(zero_app.url + "gradio/", verbose=False)
    path = client.predict("a cat", 3, api_name="/text_to_image")
    assert os.path.getsize(path) > 0
    assert zero_app.calls.read_text().split("\n")[0] == "on_gpu 20"

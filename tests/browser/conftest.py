"""Real-browser fixtures: the real app (`python app.py --model tiny`) on loopback, driven by Debian's Chromium
through Playwright's Python package (Playwright cannot download its own browsers here).

Every test that fails leaves a screenshot of each page it opened under $SDXS_ARTIFACTS (default: tmp/artifacts/browser
in the repository). Without /usr/bin/chromium (`apt-get install -y chromium`) the whole directory is skipped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser_helpers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, ROOT, free_port

START_TIMEOUT_S = 120
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # gradio_client would phone home from a thread
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    reason = None
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} not found: install it with `apt-get install -y chromium`"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright Python package is not installed"
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.browser)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


class AppProcess:
    """`python app.py --model tiny` as a subprocess on 127.0.0.1; restartable on the same port."""

    def __init__(self, cache_dir: Path, log_dir: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.args = ["--model", "tiny", "--host", "127.0.0.1", "--port", str(self.port),
                     "--log-level", "warning", *args]
        self.cache_dir = cache_dir  # where `--model tiny` writes its random-weight model once ($SDXS_CACHE)
        self.log_path = log_dir / f"app-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> AppProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "SDXS_CACHE": str(self.cache_dir),
               "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, "app.py", *self.args], cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, env=env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"app.py not ready after {START_TIMEOUT_S} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent)."""
        with urllib.request.urlopen(self.url + "metrics", timeout=5) as r:
            text = r.read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = rf"^{re.escape(name)}{re.escape('{' + want + '}') if want else ''} ([0-9.eE+-]+)$"
        match = re.search(pattern, text, re.M)
        return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="session")
def app_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sdxs-cache")


# Module scope: servers and the browser stop when the browser modules end.  Playwright's sync API keeps an asyncio
# loop running in the main thread while it lives, which would break later tests that call asyncio.run().
@pytest.fixture(scope="module")
def app_factory(app_cache, tmp_path_factory):
    """Start extra servers with options; all stop at the end of the module."""
    started: list[AppProcess] = []
    log_dir = tmp_path_factory.mktemp("app-logs")

    def make(*args: str, wait: bool = True) -> AppProcess:
        app = AppProcess(app_cache, log_dir, *args)
        started.append(app)
        return app.start(wait)

    yield make
    for app in started:
        app.stop()


@pytest.fixture(scope="session", autouse=True)
def default_app_process(app_cache, tmp_path_factory):
    """The default server's process, launched (without waiting) when the first browser test starts, so that its
    start-up (several seconds, mostly imports) overlaps with the first module's own server; stopped at the end."""
    default = AppProcess(app_cache, tmp_path_factory.mktemp("app-logs")).start(wait=False)
    yield default
    default.stop()


@pytest.fixture(scope="session")
def app(default_app_process) -> AppProcess:
    """The default server, shared by every module's tests that need no special limits."""
    default_app_process.wait_ready()
    return default_app_process


@pytest.fixture(scope="module")
def chromium_args() -> list[str]:
    """Chromium's command line; a module overrides this fixture to add flags (e.g. a video file as the webcam)."""
    return CHROMIUM_ARGS


@pytest.fixture(scope="module")
def browser(chromium_args):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser, request):
    """Open pages in fresh contexts; screenshots of all of them land in ARTIFACTS when the test fails."""
    opened = []

    def open_(url: str, viewport=(1280, 800), phone: bool = False, init_script: str | None = None, using=None):
        """`using`: another Browser than the module's (e.g. one launched with other flags)."""
        context = (using or browser).new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                                 is_mobile=phone, has_touch=phone)
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda err: page.errors.append(str(err)))
        opened.append(page)
        page.goto(url)
        return page

    yield open_
    failed = any(getattr(request.node, f"rep_{when}", None) and getattr(request.node, f"rep_{when}").failed
                 for when in ("setup", "call"))
    for i, page in enumerate(opened):
        if failed and not page.is_closed():
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{i}.png"), full_page=True)
        if not page.is_closed():
            page.context.close()

"""bench/gpu.sh cannot rot between GPU loans: its CPU dry run (tiny model, short cells) runs every step here, writes
only its own files, and the script exits non-zero when an import or a step fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def gpu_sh(out: Path, steps: str | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHON": sys.executable, **env}
    if steps:
        environ["STEPS"] = steps
    return subprocess.run(["bash", "bench/gpu.sh", "--device", "cpu", "--out", str(out)], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=110)


def test_the_dry_run_passes_every_step_and_writes_only_into_its_folder(tmp_path):
    before = set((ROOT / "bench" / "results").rglob("*"))
    run = gpu_sh(tmp_path / "out")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    written = {p.name.split("-")[0] for p in (tmp_path / "out").iterdir()}
    assert {"gpu.log", "env.json", "nvjpeg.json", "pipeline", "server", "summary.json"} <= written
    assert set((ROOT / "bench" / "results").rglob("*")) == before  # nothing copied or written elsewhere
    log = (tmp_path / "out" / "gpu.log").read_text()
    assert "=== every step passed" in log and "Loading weights" in log  # unfiltered: the libraries' own output too
    server = json.loads(next((tmp_path / "out").glob("server-*.json")).read_text())
    assert server["cells"] and all(c["valid"] and c["reused"] == 0 and c["generated"] > 0 for c in server["cells"])
    assert server["devices"][0]["features"]["warmup"]["passes"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["targets"]
    assert any(t["target"].startswith("1 image stream") for t in summary)


def test_a_failed_import_stops_the_run_with_a_non_zero_status(tmp_path):
    shadow = tmp_path / "shadow"
    (shadow / "diffusers").mkdir(parents=True)
    (shadow / "diffusers" / "__init__.py").write_text("raise ImportError('diffusers is missing on this machine')\n")
    run = gpu_sh(tmp_path / "out", PYTHONPATH=str(shadow))
    assert run.returncode == 1
    assert "imports failed: diffusers" in run.stdout + run.stderr and "=== stopping" in run.stdout
    assert not list((tmp_path / "out").glob("pipeline-*.json"))  # nothing ran after the import check


def test_a_failed_step_fails_the_run_and_the_steps_after_it_still_run(tmp_path):
    run = gpu_sh(tmp_path / "out", steps="server summary", SERVER_ARGS="--max-batch 0")  # the app refuses to start
    assert run.returncode == 1 and "=== server FAILED" in run.stdout and "=== FAILED steps: server" in run.stdout
    assert "=== summary (" in run.stdout and (tmp_path / "out" / "summary.json").exists()


def test_the_server_bench_stops_at_once_when_readyz_says_failed(monkeypatch):
    """Not after its readiness timeout: a failed load is final."""
    sys.path.insert(0, str(ROOT))
    from bench import server as bench_server

    class Answer:
        status_code = 503

        def json(self):
            return {"stage": "failed", "error": "no such folder"}

    class Alive:
        def poll(self):
            return None

    monkeypatch.setattr(bench_server.httpx, "get", lambda url, timeout: Answer())
    start = time.monotonic()
    with pytest.raises(SystemExit, match="failed to load: no such folder"):
        bench_server.wait_ready("http://127.0.0.1:1", Alive(), timeout=300)
    assert time.monotonic() - start < 5

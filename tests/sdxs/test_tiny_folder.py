"""The tiny model's cache folder is written once, whole: servers or test workers starting together on a fresh
machine never read a half-written model."""

from __future__ import annotations

import threading
from pathlib import Path

from sdxs.loading import _write_once


def _slow_writer(calls: list[str], barrier: threading.Barrier):
    def write(folder: Path) -> None:
        calls.append(folder.name)
        (folder / "weights.bin").write_bytes(b"x" * 1000)
        barrier.wait(timeout=10)  # both writers are mid-write before either finishes
        (folder / "model_index.json").write_text("{}")

    return write


def test_writers_racing_leave_one_whole_folder_and_no_leftovers(tmp_path):
    folder, calls, barrier = tmp_path / "tiny-v1", [], threading.Barrier(2)
    threads = [threading.Thread(target=_write_once, args=(folder, _slow_writer(calls, barrier))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert len(calls) == 2 and folder.name not in calls  # each wrote into its own temporary folder
    assert sorted(p.name for p in folder.iterdir()) == ["model_index.json", "weights.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-v1"]


def test_a_stale_half_written_folder_is_replaced(tmp_path):
    folder = tmp_path / "tiny-v1"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"half")  # an older process died before model_index.json
    _write_once(folder, lambda f: (f / "model_index.json").write_text("{}"))
    assert sorted(p.name for p in folder.iterdir()) == ["model_index.json"]

"""Memory stays bounded under legal but huge inputs (issue 25): sessions sending distinct 4096x4096 PNGs while a
good session streams small JPEGs.  Before the fix, three such rounds took a tiny-model server from 585 MB to 1857 MB,
which it kept, and the good session fell to 1.4 frames/s (bench/memory.py has the full figures)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import memory  # noqa: E402

KEPT_MB = 120  # RSS after the last round, over the warm server's (docs/protocol.md section 11)
PEAK_MB = 400  # RSS at any sampled moment, over the warm server's


def run_rounds(tmp_path, rounds: int, frames: int) -> dict:
    distinct = 7 * frames  # a round's frames all differ; the next round's sessions are new ones (nothing carries over)
    return memory.main(["--rounds", str(rounds), "--frames", str(frames), "--distinct", str(distinct),
                        "--out", str(tmp_path)])


def check(result: dict) -> None:
    assert result["rss_mb_kept"] <= KEPT_MB, result
    assert result["rss_mb_peak_over_warm"] <= PEAK_MB, result
    assert all(r["good_session_fps"] >= 5 for r in result["rounds"]), result  # not held up by the PNG decodes


@pytest.mark.timeout(60)
def test_huge_pngs_leave_memory_bounded_and_other_sessions_served(tmp_path):
    check(run_rounds(tmp_path, rounds=3, frames=1))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ten_rounds_of_seven_sessions_sending_three_huge_pngs_each(tmp_path):
    check(run_rounds(tmp_path, rounds=10, frames=3))

"""The miniature reproduction (about 30 minutes on 2 CPU cores): ``pytest -m slow tests/training/test_mini.py``."""

import pytest


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_miniature_reproduction_shows_the_papers_claims(tmp_path):
    from training.mini.run import main

    results = main(["--out", str(tmp_path / "results"), "--work", str(tmp_path / "work")])
    failed = [claim for claim, holds in results["claims"].items() if not holds]
    assert not failed, f"claims not shown: {failed}; see {tmp_path / 'results' / 'results.md'}"

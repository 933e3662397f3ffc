"""The miniature reproduction (about 35 minutes on 2 CPU cores): ``pytest -m slow tests/training/test_mini.py``."""

import pytest


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_miniature_reproduction_shows_the_papers_claims(tmp_path):
    from training.mini.run import main

    results = main(["--out", str(tmp_path / "results"), "--work", str(tmp_path / "work")])
    failed = [claim for claim, holds in results["claims"].items() if not holds]
    assert not failed, f"claims not shown: {failed}; see {tmp_path / 'results' / 'results.md'}"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """Every stage, the metrics and the export check at 1% of the steps (and of the generated samples)."""
    from training.mini.run import main

    root = tmp_path_factory.mktemp("toy")
    results = main(
        [
            "--out",
            str(root / "results"),
            "--work",
            str(root / "work"),
            "--scale",
            "0.01",
            "--eval-per-class",
            "2",
            "--threads",
            "0",
        ]
    )
    return root, results


def test_miniature_pipeline_runs_end_to_end_at_toy_scale(toy_run):
    import torch
    from safetensors.torch import load_file

    root, results = toy_run
    work = root / "work"
    assert set(results["claims"]) and results["export"]["diffusers_loads"] and results["export"]["sdxs_loads"] is True
    assert (root / "results" / "results.md").read_text().count("| claim | holds |") == 1
    for row in [*results["generation"]["rows"].values(), *results["controlnet"].values()]:
        assert row["fd"] >= 0 and 0 <= row["accuracy"] <= 1
        assert row["fd_tiny_decoder"] >= 0 and 0 <= row["accuracy_tiny_decoder"] <= 1  # what the export ships
        assert row["fd_stage2_decoder"] >= 0 and 0 <= row["accuracy_stage2_decoder"] <= 1
    assert results["decoder"]["tiny_decoder_psnr"] > 0 and results["decoder"]["stage2_decoder_psnr"] > 0
    vaes = (work / "export" / "vae", work / "decoder_onestep" / "final" / "vae")  # the export ships the fine-tune
    shipped, fine_tuned = (load_file(next(p.glob("*.safetensors"))) for p in vaes)
    assert shipped.keys() == fine_tuned.keys() and all(torch.equal(shipped[k], fine_tuned[k]) for k in shipped)


def test_ablations_of_stages_2_4_and_5_rerun_from_the_toy_run(toy_run):
    import json

    from training.mini import ablate

    root, _ = toy_run
    work, out = root / "work", root / "abl"
    common = ["--work", str(work), "--out", str(out), "--eval-per-class", "2", "--threads", "1"]
    five = ablate.main(["cn", "{}", "--stage", "5", *common])
    ema = ablate.main(["ema", json.dumps({"from_warmup_weights": True, "ema_decay": 0.9}), "--seed", "3", *common])
    decoder = ablate.main(["dec", json.dumps({"lr": 1e-3}), "--stage", "2", *common])
    assert 0 <= five["with_controlnet"]["edge_f1"] <= 1 and ema["onestep"]["fd"] >= 0
    assert ema["seed"] == 3 and five["seed"] == 0  # the ablation's own training seed, else the run's
    assert 0 <= decoder["with_controlnet"]["edge_f1_tiny_decoder"] <= 1 and decoder["psnr"] > 0
    assert decoder["without"]["fd_tiny_decoder"] >= 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 3


def test_spread_scores_the_toy_runs_students_over_evaluation_seeds(toy_run):
    from training.mini import spread as mini_spread

    root, _ = toy_run
    spread = mini_spread.main(
        ["--work", str(root / "work"), "--seeds", "1", "2", "--eval-per-class", "2", "--threads", "1"]
    )
    assert {row["fd_std"] >= 0 for row in spread.values()} == {True} and len(spread) == 4


def test_a_foreign_work_folder_is_refused_and_kept(tmp_path):
    from training.mini.run import main

    mine = tmp_path / "notes.txt"
    mine.write_text("keep me")
    with pytest.raises(ValueError, match="not made by a previous miniature run"):
        main(["--out", str(tmp_path / "results"), "--work", str(tmp_path), "--scale", "0.01"])
    assert mine.read_text() == "keep me"


def test_teacher_controlnet_tool_scores_each_variant(toy_run):
    """On the toy run's teacher (the tool trains one only where its --work has none)."""
    from training.mini import teacher_controlnet

    root, _ = toy_run
    common = ["--work", str(root / "work"), "--scale", "0.01", "--per-class", "1", "--threads", "1"]
    rows = teacher_controlnet.main(["none", "2:cubic", *common])
    assert [r["variant"] for r in rows] == ["none", "2:cubic"] and "train_s" in rows[1]
    assert all(0 <= r["edge_f1"] <= 1 and r["fd"] >= 0 and 0 <= r["accuracy"] <= 1 for r in rows)

"""The miniature reproduction: the toy run end to end (one seed), its tools, and the pure parts (splits, the claim
rule, aggregation over seeds).  The full three-seed run (about 90 minutes on 2 CPU cores):
``pytest -m slow tests/training/test_mini.py``."""

import pytest


@pytest.mark.slow
@pytest.mark.timeout(6 * 3600)
def test_miniature_reproduction_shows_the_papers_claims(tmp_path):
    from training.mini.run import main

    results = main(["--out", str(tmp_path / "results"), "--work", str(tmp_path / "work")])
    failed = [claim for claim, c in results["claims"].items() if not c["holds"]]
    assert not failed, f"claims not shown: {failed}; see {tmp_path / 'results' / 'results.md'}"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """Every stage of one seed, the metrics and the export check at 1% of the steps (and of the generated samples)."""
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
            "1",  # the other test worker shares the 2 cores: a second thread would spin-wait on it
            "--seeds",
            "0",
        ]
    )
    return root, results


def test_miniature_pipeline_runs_end_to_end_at_toy_scale(toy_run):
    import torch
    import yaml
    from safetensors.torch import load_file

    from training.mini.evaluation import FINAL

    root, results = toy_run
    work = root / "work"
    seed = results["per_seed"]["0"]
    assert results["seeds"] == [0] and seed["split"] == "test" and results["eval_split"] == "test"
    assert seed["export"]["diffusers_loads"] and seed["export"]["sdxs_loads"] is True
    assert "segmented Diff-Instruct beats the equal-compute warm-up-only control (FD)" in results["claims"]
    for claim in results["claims"].values():
        assert claim["holds"] == claim["mean"]["holds"] == claim["per_seed"][0]["holds"]  # one seed: the same verdict
    md = (root / "results" / "results.md").read_text()
    assert md.count("| claim | holds | mean | seed 0 |") == 1 and "strict majority" in md
    for row in [*seed["generation"]["rows"].values(), *seed["controlnet"].values()]:
        assert row["fd"] >= 0 and 0 <= row["accuracy"] <= 1
        assert row["fd_tiny_decoder"] >= 0 and 0 <= row["accuracy_tiny_decoder"] <= 1  # what the export ships
        assert row["fd_stage2_decoder"] >= 0 and 0 <= row["accuracy_stage2_decoder"] <= 1
    assert seed["decoder"]["tiny_decoder_psnr"] > 0 and seed["decoder"]["stage2_decoder_psnr"] > 0
    assert results["aggregate"]["mean"]["decoder"]["tiny_decoder_psnr"] == seed["decoder"]["tiny_decoder_psnr"]
    assert results["aggregate"]["sd"]["decoder"]["tiny_decoder_psnr"] == 0
    run = work / "seed-0"  # the seed's students; the givens sit beside it, shared
    assert (work / "teacher").is_dir() and (work / "givens.json").exists() and not (run / "teacher").exists()
    # the export ships the decoder's fine-tune and stage 4c's UNet (the LoRA merged), on which stage 5 trained
    for shipped_dir, trained_dir in (
        (run / "export" / "vae", run / "decoder_onestep" / "final" / "vae"),
        (run / "export" / "unet", run / "lora_gan" / "final" / "unet"),
    ):
        shipped, trained = (load_file(next(p.glob("*.safetensors"))) for p in (shipped_dir, trained_dir))
        assert shipped.keys() == trained.keys() and all(torch.equal(shipped[k], trained[k]) for k in shipped)
    stage5 = yaml.safe_load((run / "configs" / "onestep_controlnet.yaml").read_text())
    assert stage5["student"] == str(run / "lora_gan" / "final" / "unet")
    # the paper's choices are the recipe's: no denoising loss in KD, a Projected-GAN decoder, alpha lowered from
    # near 1, the UNet encoder's features, teacher-sample controls with part of the noise re-initialised
    names = ("unet_kd", "decoder", "onestep")
    configs = {n: yaml.safe_load((run / "configs" / f"{n}.yaml").read_text()) for n in names}
    assert configs["unet_kd"]["denoise_weight"] == 0 and configs["decoder"]["discriminator"] == "projected"
    assert configs["onestep"]["segment_alpha"] == 0.95 and configs["onestep"]["segment_alpha_end"] == 0.5
    assert configs["onestep"]["feature_net"] == "unet_encoder"
    assert stage5["control_source"] == "teacher" and stage5["fresh_noise_fraction"] == 0.5
    assert FINAL in seed["generation"]["rows"]


def test_package_ships_the_first_seeds_export(toy_run, tmp_path):
    from training.mini import package

    root, _ = toy_run
    out = package.main(["--work", str(root / "work"), "--results", str(root / "results"), "--out", str(tmp_path / "m")])
    assert (out / "unet").is_dir() and (out / "digit_classifier.safetensors").exists()
    assert "training seed 0" in (out / "README.md").read_text()


def test_ablations_of_stages_1_2_2s_4_4c_and_5_rerun_from_the_toy_run(toy_run):
    import json

    import yaml

    from training.mini import ablate

    root, _ = toy_run
    work, out = root / "work", root / "abl"
    common = ["--work", str(work), "--out", str(out), "--eval-per-class", "2", "--threads", "1"]
    five = ablate.main(["cn", json.dumps({"control_source": "data"}), "--stage", "5", *common])  # its own pairs
    ema = ablate.main(["ema", json.dumps({"from_warmup_weights": True, "ema_decay": 0.9}), "--seed", "3", *common])
    decoder = ablate.main(["dec", json.dumps({"lr": 1e-3}), "--stage", "2", *common])
    own_decoder = ablate.main(["dec2s", json.dumps({"discriminator": "patch"}), "--stage", "2s", *common])
    kd = ablate.main(["kd", json.dumps({"denoise_weight": 1.0}), "--stage", "1", *common])
    lora = ablate.main(["lora", json.dumps({"max_steps": 2, "lora_rank": 2}), "--stage", "4c", *common])
    assert kd["student_25_steps"]["fd"] >= 0 and lora["onestep"]["fd"] >= 0
    assert (out / "lora" / "final" / "lora" / "adapter_model.safetensors").exists()
    assert (out / "cn" / "cache" / "pairs.pt").exists()  # other pair settings: new pairs, the run's left alone
    assert 0 <= five["with_controlnet"]["edge_f1"] <= 1 and ema["onestep"]["fd"] >= 0
    assert ema["seed"] == 3 and five["seed"] == 0  # the ablation's own training seed, else the run's
    assert {five["split"], ema["split"], decoder["split"]} == {"validation"}  # settings are chosen on validation
    assert 0 <= decoder["with_controlnet"]["edge_f1_tiny_decoder"] <= 1 and decoder["psnr"] > 0
    assert decoder["without"]["fd_tiny_decoder"] >= 0
    assert own_decoder["psnr"] > 0 and not yaml.safe_load((out / "dec2s" / "config.yaml").read_text()).get("tiny_vae")
    assert len((out / "results.jsonl").read_text().splitlines()) == 6


def test_spread_scores_the_toy_runs_students_over_evaluation_seeds(toy_run):
    from training.mini import spread as mini_spread

    root, _ = toy_run
    spread = mini_spread.main(
        ["--work", str(root / "work"), "--seeds", "1", "2", "--eval-per-class", "2", "--threads", "1"]
    )
    assert {row["fd_std"] >= 0 for row in spread.values()} == {True} and len(spread) == 5


def test_a_foreign_work_folder_is_refused_and_kept(tmp_path):
    from training.mini.run import main

    mine = tmp_path / "notes.txt"
    mine.write_text("keep me")
    with pytest.raises(ValueError, match="not made by a previous miniature run"):
        main(["--out", str(tmp_path / "results"), "--work", str(tmp_path), "--scale", "0.01"])
    assert mine.read_text() == "keep me"


def test_givens_are_reused_only_where_they_match(toy_run, tmp_path):
    from training.mini.recipe import Givens
    from training.mini.run import main

    root, _ = toy_run
    work = root / "work"
    with pytest.raises(ValueError, match="holds no finished givens"):
        main(["--out", str(tmp_path / "r"), "--work", str(tmp_path / "empty"), "--reuse-givens"])
    with pytest.raises(ValueError, match="scale 0.01; this run asks for 0, 0, 1.0"):
        main(["--out", str(tmp_path / "r"), "--work", str(work), "--reuse-givens", "--seeds", "7"])
    assert (work / "seed-0").is_dir() and (work / "teacher").is_dir()  # a refused reuse deletes nothing
    (work / "seed-7").mkdir()
    losses = Givens(work, 0, 0, 0.01).reuse([7])
    assert set(losses) >= {"vae", "teacher_unet"} and not (work / "seed-7").exists() and (work / "seed-0").is_dir()


def test_a_run_resumed_at_stage_5_keeps_the_earlier_stages_and_remakes_the_same_later_ones(toy_run, tmp_path):
    """Through ``Recipe.run`` (the CLI's path without the scoring: equal weights give equal scores)."""
    import json
    import shutil

    import torch
    from safetensors.torch import load_file

    from training.mini import report
    from training.mini.recipe import RUN_RECORD, Givens, Recipe, scaled_steps, stage_device
    from training.mini.run import main

    root, results = toy_run
    work = tmp_path / "work"
    shutil.copytree(root / "work", work)
    seed_dir = work / "seed-0"
    for pairs in (seed_dir / "cache").glob("pairs_controlnet.*"):  # recorded with the toy run's paths: made again
        pairs.unlink()
    with pytest.raises(SystemExit, match="--from-stage goes with --reuse-givens"):
        main(["--work", str(work), "--scale", "0.01", "--from-stage", "stage5_onestep_controlnet"])
    weights = "diffusion_pytorch_model.safetensors"
    made = {
        part: load_file(seed_dir / part / "final" / name / weights)
        for part, name in (("onestep_controlnet", "controlnet"), ("decoder_onestep", "vae"), ("lora_gan", "unet"))
    }
    kept_unet = (seed_dir / "lora_gan" / "final" / "unet" / weights).stat().st_mtime_ns
    (seed_dir / "export" / "stale").write_text("made by the earlier run")
    recipe = Recipe(Givens.load(work), 0, scaled_steps(0.01), 0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(results["threads"])  # bitwise only at the toy run's thread count (the reductions' order)
    try:
        torch.manual_seed(0)
        with stage_device("cpu"):
            trained = recipe.run("stage5_onestep_controlnet")
    finally:
        torch.set_num_threads(threads)
    assert (seed_dir / "lora_gan" / "final" / "unet" / weights).stat().st_mtime_ns == kept_unet  # not trained again
    for part, name in (("onestep_controlnet", "controlnet"), ("decoder_onestep", "vae")):
        remade = load_file(seed_dir / part / "final" / name / weights)
        assert made[part].keys() == remade.keys() and all(torch.equal(made[part][k], remade[k]) for k in remade), part
    assert not (seed_dir / "export" / "stale").exists() and (seed_dir / "export" / "model_index.json").exists()
    before = results["per_seed"]["0"]
    for name in ("stage1_unet_kd_and_control", "stage4_onestep", "stage4c_lora_gan"):  # the kept stages' timings
        assert trained["timings_s"][name] == before["timings_s"][name]
    assert trained["equal_compute_control_steps"] == before["equal_compute_control_steps"]
    md = report.markdown({**results, "resumed_from_stage": "stage5_onestep_controlnet"})
    assert "Resumed at stage5_onestep_controlnet" in md and "Resumed at" not in report.markdown(results)
    # a record whose kept stages were trained with other steps, or none at all, is refused before anything is deleted
    record = json.loads((seed_dir / RUN_RECORD).read_text())
    (seed_dir / RUN_RECORD).write_text(json.dumps({**record, "steps": {**record["steps"], "kd": 1}}))
    recipe = Recipe(Givens.load(work), 0, scaled_steps(0.01), 0.01)
    with pytest.raises(ValueError, match="other steps \\(kd 1 -> 6\\)"):
        recipe.run("stage5_onestep_controlnet")
    (seed_dir / RUN_RECORD).unlink()
    with pytest.raises(ValueError, match="holds no record of an earlier run"):
        recipe.run("stage3_controlnet")
    assert (seed_dir / "controlnet" / "final").is_dir() and (seed_dir / "onestep_controlnet" / "final").is_dir()


def test_the_teacher_controlnet_is_rebuilt_in_place_keeping_the_other_givens(toy_run, tmp_path):
    import json
    import shutil

    import torch
    from safetensors.torch import load_file

    from training.mini.prepare import rebuild_teacher_controlnet
    from training.mini.recipe import Givens
    from training.mini.run import main

    root, _ = toy_run
    work = tmp_path / "work"
    shutil.copytree(root / "work", work, ignore=shutil.ignore_patterns("seed-*"))
    with pytest.raises(SystemExit, match="--reuse-givens"):
        main(["--work", str(work), "--rebuild-teacher-controlnet", "--scale", "0.01"])
    assert (work / "teacher").is_dir()  # refused before anything was touched
    weights = "diffusion_pytorch_model.safetensors"
    before, unet = load_file(work / "teacher_controlnet" / weights), load_file(work / "teacher" / "unet" / weights)
    givens = Givens.load(work)
    losses = rebuild_teacher_controlnet(work, givens.control_rows(), 3, seed=1)
    after = load_file(work / "teacher_controlnet" / weights)
    assert len(losses) == 3 and json.loads((work / "prepare_losses.json").read_text())["teacher_controlnet"] == losses
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(unet[k], v) for k, v in load_file(work / "teacher" / "unet" / weights).items())
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("teacher")) == ["teacher", "teacher_controlnet"]


def test_teacher_controlnet_tool_scores_each_variant(toy_run):
    """On the toy run's teacher (the tool trains one only where its --work has none)."""
    from training.mini import teacher_controlnet

    root, _ = toy_run
    common = ["--work", str(root / "work"), "--scale", "0.01", "--per-class", "1", "--threads", "1"]
    rows = teacher_controlnet.main(["none", "given", "2:cubic:slanted1", *common])
    assert [r["variant"] for r in rows] == ["none", "given", "2:cubic:slanted1"] and "train_s" in rows[2]
    assert all(0 <= r["edge_f1"] <= 1 and r["fd"] >= 0 and 0 <= r["accuracy"] <= 1 for r in rows)
    assert all(0 <= r["sketch_accuracy"] <= 1 for r in rows[1:]) and "sketch_accuracy" not in rows[0]


def test_slanted_copies_are_new_shapes_of_the_same_digits_fixed_by_their_seed():
    import torch

    from training.mini import data as mdata

    digits = mdata.digits(32)
    pixels, labels = digits.train[:40], digits.train_labels[:40]
    rows, captions = mdata.sketch_rows(pixels, labels, 2, seed=3)
    assert rows.shape == (120, 3, 32, 32) and captions == mdata.sketch_captions(labels.repeat(3))
    assert torch.equal(rows[:40], pixels) and torch.equal(rows[40:80], mdata.slanted(pixels, 3))
    assert not torch.equal(rows[40:80], rows[80:]) and rows.min() >= -1 and rows.max() <= 1
    moved = (rows[40:80] - pixels).abs().mean((1, 2, 3))
    assert (moved > 0.05).float().mean() > 0.9  # nearly every digit changed shape
    ink = ((rows + 1) / 2).mean((1, 2, 3))
    assert (ink[40:80] / ink[:40]).mean().item() == pytest.approx(0.95, abs=0.15)  # the ink is kept, not lost


def test_three_disjoint_stratified_splits_fixed_by_the_split_seed_alone():
    import torch

    from training.mini import data as mdata

    a, b, other = mdata.digits(8), mdata.digits(8), mdata.digits(8, split_seed=1)
    sizes = [len(a.split(s)[1]) for s in mdata.SPLITS]
    assert sum(sizes) == 1797 and sizes[1] == sizes[2] == 270
    assert all(torch.equal(a.split(s)[0], b.split(s)[0]) for s in mdata.SPLITS)
    assert not torch.equal(a.test, other.test)
    flat = {s: {tuple(x.flatten().tolist()) for x in a.split(s)[0]} for s in mdata.SPLITS}
    assert not (flat["validation"] & flat["test"]) and not (flat["train"] & flat["test"])
    assert torch.bincount(a.validation_labels).min() >= 25 and torch.bincount(a.test_labels).min() >= 25
    with pytest.raises(ValueError, match="split must be one of"):
        a.split("held_out")


def test_validation_and_test_draw_different_evaluation_noise():
    from training.mini.evaluation import NOISE_SEEDS

    assert NOISE_SEEDS["validation"] != NOISE_SEEDS["test"]


def test_a_claim_holds_on_the_mean_and_in_a_strict_majority_of_seeds():
    from training.mini.report import claim_holds

    assert claim_holds(True, [True, True, False])
    assert not claim_holds(True, [True, False, False])  # the mean alone is not enough
    assert not claim_holds(False, [True, True, False])  # nor the majority alone
    assert claim_holds(True, [True]) and not claim_holds(True, [True, False])  # 1 of 2 is no majority


def _seed_results(one_step_fd: float, control_fd: float) -> dict:
    """A seed's results with the numbers every claim reads (the final model as good as stage 4's)."""
    from training.mini.evaluation import FINAL

    rows = {
        "teacher, 25 steps": {"fd": 30.0, "accuracy": 0.95},
        "teacher, 1 step": {"fd": 200.0, "accuracy": 0.9},
        "student KD, 25 steps": {"fd": 40.0, "accuracy": 0.9},
        "student no KD, 25 steps": {"fd": 60.0, "accuracy": 0.8},
        "one-step student, after segmented Diff-Instruct": {"fd": one_step_fd, "accuracy": 0.96},
        "one-step student, warm-up only (equal compute)": {"fd": control_fd, "accuracy": 0.96},
        FINAL: {"fd": one_step_fd, "accuracy": 0.96},
    }
    controlnet = {
        "one-step student + one-step ControlNet (stage 5)": {"edge_f1": 0.5},
        "one-step student without ControlNet": {"edge_f1": 0.2},
    }
    decoder = {"tiny_decoder_psnr": 29.0, "bilinear_psnr": 20.0}
    sketch = {"sketch: one-step student + one-step ControlNet": {"accuracy": 0.95}}
    return {"generation": {"rows": rows}, "controlnet": controlnet, "decoder": decoder, "sketch": sketch,
            "export": {"ok": True}}  # fmt: skip


def test_the_rule_names_the_majority_of_the_seeds_it_was_judged_on():
    from training.mini.report import claim_rule

    assert claim_rule(3).endswith("(2 of 3 seeds).") and claim_rule(2).endswith("(2 of 2 seeds).")
    assert claim_rule(5).endswith("(3 of 5 seeds).") and claim_rule(1).endswith("(1 of 1 seed).")


def test_claims_aggregate_over_synthetic_seeds():
    from training.mini.report import aggregate, settle_claims

    beats = "segmented Diff-Instruct beats the equal-compute warm-up-only control (FD)"
    # holds on the mean (mean 26 < 30) but only in seed 0: does not hold
    one_of_three = [_seed_results(10.0, 30.0), _seed_results(34.0, 30.0), _seed_results(34.0, 30.0)]
    agg = aggregate(one_of_three)
    assert agg["mean"]["generation"]["rows"]["one-step student, after segmented Diff-Instruct"]["fd"] == 26.0
    assert "export" not in agg["mean"]  # flags are not averaged
    settled = settle_claims(one_of_three, agg["mean"])
    assert settled[beats]["mean"]["holds"] and [s["holds"] for s in settled[beats]["per_seed"]] == [True, False, False]
    assert not settled[beats]["holds"]
    assert not settled["one-step FD <= teacher 25-step FD"]["holds"]
    assert settled["KD student beats no-KD student (FD)"]["holds"]
    # holds in 2 of 3 and on the mean: holds
    two_of_three = [_seed_results(28.0, 30.0), _seed_results(29.0, 30.0), _seed_results(31.0, 30.0)]
    settled = settle_claims(two_of_three, aggregate(two_of_three)["mean"])
    assert settled[beats]["holds"] and settled["one-step FD <= teacher 25-step FD"]["holds"]
    assert settled["one-step FD <= teacher 1-step FD / 4"]["mean"]["right"] == 50.0


def test_tables_show_mean_and_sd_and_claims_every_seed():
    from training.mini.report import _Cells, aggregate, claims_table, settle_claims

    seeds = [_seed_results(28.0, 30.0), _seed_results(29.0, 30.0), _seed_results(33.0, 30.0)]
    agg = aggregate(seeds)
    cell = _Cells(agg, 3)
    assert cell("generation", "rows", "one-step student, after segmented Diff-Instruct", "fd") == "30.00 ± 2.65"
    assert _Cells(aggregate(seeds[:1]), 1)("decoder", "tiny_decoder_psnr") == "29.00"  # one seed: no ± 0
    lines = claims_table(settle_claims(seeds, agg["mean"]), [0, 1, 2])
    assert lines[2] == "| claim | holds | mean | seed 0 | seed 1 | seed 2 |"
    beats = next(line for line in lines if line.startswith("| segmented Diff-Instruct beats"))
    # 2 of 3 seeds, but not on the mean (30 < 30 fails): does not hold
    cells = "| **no** | 30.00 < 30.00: no | 28.00 < 30.00: yes | 29.00 < 30.00: yes | 33.00 < 30.00: no |"
    assert beats.endswith(cells)


def test_cpu_is_kept_for_the_stages_on_a_gpu_machine_and_the_environment_restored(monkeypatch):
    import os

    import torch

    from training.mini.recipe import stage_device

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with stage_device("cpu"):
        assert os.environ["ACCELERATE_USE_CPU"] == "true"
    assert "ACCELERATE_USE_CPU" not in os.environ
    with stage_device("cuda"):
        assert "ACCELERATE_USE_CPU" not in os.environ


def test_the_grid_pools_teachers_by_the_mean_and_a_majority_of_teachers():
    from training.mini.grid import markdown, pooled
    from training.mini.report import aggregate, settle_claims

    def teacher(fds: list[float]) -> dict:  # two seeds; the claim "one-step FD <= teacher's 30" per seed
        seeds = [_seed_results(fd, 30.0) for fd in fds]
        return {"teacher": f"t{fds}", "seeds": [0, 1], "claims": settle_claims(seeds, aggregate(seeds)["mean"])}

    claim = "one-step FD <= teacher 25-step FD"
    # three teachers hold (both seeds), one fails badly: holds for 3 of 4 teachers and on the pooled mean
    grid = pooled([teacher([20, 25]), teacher([28, 29]), teacher([25, 29]), teacher([60, 70])])
    assert grid[claim]["teachers_holding"] == 3 and not grid[claim]["mean"]["holds"]  # mean 35.75 > 30
    assert pooled([teacher([20, 25]), teacher([29, 29])])[claim]["mean"]["left"] == pytest.approx(25.75)
    assert not grid[claim]["holds"]
    grid = pooled([teacher([20, 25]), teacher([28, 29]), teacher([25, 29]), teacher([31, 40])])
    assert grid[claim]["holds"] and grid[claim]["runs_holding"] == 6 and grid[claim]["runs"] == 8
    # one seed of two failing fails that teacher (strict majority of two): 2 of 4 teachers is no majority
    grid = pooled([teacher([20, 25]), teacher([28, 29]), teacher([25, 31]), teacher([26, 31])])
    assert grid[claim]["teachers_holding"] == 2 and not grid[claim]["holds"]
    teachers = [teacher([20, 25]), teacher([28, 29])]
    md = markdown({"teachers": teachers, "pooled": pooled(teachers)})
    assert "| one-step FD <= teacher 25-step FD | yes |" in md and "2 of 2" in md

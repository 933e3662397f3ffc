"""The cost sheet (``training.cost``) in its CPU dry run: every stage's real entry point runs a few steps on the toy
teacher, and the projection covers every stage of the paper-scale schedule."""

import pytest


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    from training import cost

    root = tmp_path_factory.mktemp("cost")
    return root, cost.main(["--dry-run", "--out", str(root / "out"), "--work", str(root / "work"), "--batch-sizes",
                            "2"])  # fmt: skip


def test_every_stage_is_measured_through_its_entry_point(dry_run):
    from training.cost import STAGES

    _, result = dry_run
    assert [r["stage"] for r in result["measured"]] == list(STAGES)
    for row in result["measured"]:
        assert "error" not in row and row["step_s"] > 0 and row["first_step_s"] > 0 and row["peak_memory_gb"] > 0
    one_step = next(r for r in result["measured"] if r["stage"] == "4 one-step")
    assert one_step["diff_instruct_step_s"] > one_step["warmup_step_s"] > 0  # fake updates + two score models
    assert result["ode_seconds_per_sample"] > 0


def test_the_projection_prices_the_configs_schedule(dry_run):
    from training.cost import STAGES, schedule

    root, result = dry_run
    table = {t["stage"]: t for t in result["projection"]}
    assert list(table) == list(STAGES)
    unet = table["1 UNet KD"]
    assert (unet["steps"], unet["batch"], unet["processes"]) == (50000, 64, 8)  # distill_unet_sd15.yaml
    step = next(r for r in result["measured"] if r["stage"] == "1 UNet KD")["step_s"]
    assert unet["train_gpu_hours"] == pytest.approx(50000 * step * 64 / 2 * 8 / 3600)  # per sample from batch 2
    assert table["4 one-step"]["one_off_gpu_hours"] == pytest.approx(
        schedule("onestep_sd15.yaml")["pairs"] * result["ode_seconds_per_sample"] / 3600)
    md = (root / "out" / "cost.md").read_text()
    assert "Dry run" in md and md.count("| 4 one-step |") == 2 and "Total:" in md

"""One stage under ``accelerate launch`` with two CPU processes (DDP over gloo): trains, checkpoints, saves.

accelerate 1.x's ``--cpu`` flag always takes its single-process launcher; two CPU processes come from its torchrun
launcher (``--multi_gpu``) with ``ACCELERATE_USE_CPU=true``, which makes the state MULTI_CPU (gloo)."""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from training.mini.models import RECIPE_DICT

TWO_CPU_PROCESSES = ["launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                     "--dynamo_backend", "no"]  # fmt: skip


@pytest.mark.timeout(600)
def test_distill_unet_under_accelerate_launch_with_two_cpu_processes(toy, tmp_path):
    if shutil.which("accelerate") is None and not os.path.exists(
        os.path.join(os.path.dirname(sys.executable), "accelerate")
    ):
        pytest.skip("accelerate CLI not installed")
    out = tmp_path / "ddp"
    cfg = dict(
        output_dir=str(out),
        teacher=str(toy.teacher),
        recipe=RECIPE_DICT,
        data=toy.data_cfg(),
        max_steps=2,
        batch_size=2,
        checkpoint_every=2,
        num_validation=2,
        validation_steps=2,
        progress=False,
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "true",
        "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    cmd = [
        accelerate,
        *TWO_CPU_PROCESSES,
        "-m",
        "training.stages.distill_unet",
        "--config",
        str(tmp_path / "c.yaml"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=550)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "final" / "unet" / "config.json").exists()
    assert "MULTI_CPU" in proc.stdout + proc.stderr, "expected two processes"
    ckpt = out / "checkpoints" / "step_0000002"
    assert (ckpt / "random_states_0.pkl").exists() and (ckpt / "random_states_1.pkl").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_onestep_under_two_processes_solves_its_pairs_in_shards_equal_to_one_process(toy, tmp_path):
    """The one-step stage (both models, EMA, fake-model updates) under ``accelerate launch`` with two CPU processes:
    each rank solves half of the ODE-pair chunks and the merged file equals a single process's.  About 15 s: slow only
    to keep the default suite within 5 minutes."""
    import torch

    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    if not os.path.exists(accelerate):
        pytest.skip("accelerate CLI not installed")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "true",
        "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }

    def config(name: str):
        cfg = dict(
            output_dir=str(tmp_path / name),
            teacher=str(toy.teacher),
            recipe=RECIPE_DICT,
            data={**toy.data_cfg(), "cache_dir": str(tmp_path / f"cache-{name}")},
            num_pairs=130,
            ode_steps=2,
            warmup_steps=1,
            max_steps=3,
            batch_size=2,
            fake_updates=1,
            checkpoint_every=3,
            num_validation=2,
            progress=False,
            ema_decay=0.9,
        )
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        return ["-m", "training.stages.onestep", "--config", str(tmp_path / f"{name}.yaml")]

    two = subprocess.run(
        [
            accelerate,
            *TWO_CPU_PROCESSES,
            *config("two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=550,
    )
    assert two.returncode == 0 and "MULTI_CPU" in two.stdout + two.stderr, two.stderr[-3000:]
    one = subprocess.run([sys.executable, *config("one")], env=env, capture_output=True, text=True, timeout=550)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (torch.load(tmp_path / name / "cache" / "pairs.pt") for name in ("two", "one"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)
    assert not list((tmp_path / "two" / "cache").glob("*.shard*"))  # shards merged and removed
    assert (tmp_path / "two" / "final" / "unet" / "config.json").exists()

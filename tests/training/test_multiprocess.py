"""The one-step stage under ``accelerate launch`` with two CPU processes (DDP over gloo) equals one process.

accelerate 1.x's ``--cpu`` flag always takes its single-process launcher; two CPU processes come from its torchrun
launcher (``--multi_gpu``) with ``ACCELERATE_USE_CPU=true``, which makes the state MULTI_CPU (gloo)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training.mini.models import RECIPE_DICT

TWO_CPU_PROCESSES = ["launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                     "--dynamo_backend", "no"]  # fmt: skip


def _environment() -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "true",
        "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


def _accelerate() -> str:
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    if not os.path.exists(accelerate):
        pytest.skip("accelerate CLI not installed")
    return accelerate


def _onestep(toy, tmp_path, name: str, processes: int, **extra) -> None:
    """Stage 4 on the toy (both models, fake updates, EMA, SGD: a gradient difference shows) into ``tmp_path/name``,
    under ``processes`` CPU processes (one: in this process, with one torch thread like each launched process);
    each process's batch is 2 / ``processes`` (the same global batch)."""
    cfg = dict(
        output_dir=str(tmp_path / name),
        teacher=str(toy.teacher),
        recipe=RECIPE_DICT,
        data={**toy.data_cfg(), "cache_dir": str(tmp_path / f"cache-{name}")},
        num_pairs=130,
        ode_steps=2,
        warmup_steps=1,
        max_steps=3,
        batch_size=2 // processes,
        fake_updates=1,
        optimizer="sgd",
        lr=0.01,
        fake_lr=0.01,
        checkpoint_every=2,
        num_validation=2,
        progress=False,
        ema_decay=0.9,
    )
    cfg.update(extra)
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    if processes == 1:  # in process: no second interpreter start-up (several seconds of imports)
        _in_process(tmp_path / f"{name}.yaml")
        return
    stage = ["-m", "training.stages.onestep", "--config", str(tmp_path / f"{name}.yaml")]
    proc = subprocess.run([_accelerate(), *TWO_CPU_PROCESSES, *stage], env=_environment(), capture_output=True,
                          text=True, timeout=550)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MULTI_CPU" in proc.stdout + proc.stderr


def _in_process(config: Path) -> None:
    import torch

    from training.stages import onestep  # its Runner resets accelerate's process state first

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        onestep.main(["--config", str(config)])
    finally:
        torch.set_num_threads(threads)


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(next((run / "final" / "unet").glob("*.safetensors")))


@pytest.mark.timeout(600)
def test_onestep_under_two_processes_equals_one_process_at_the_same_global_batch(toy, tmp_path):
    """Each rank solves half of the ODE-pair chunks (the merged file equals one process's), trains on its rows of
    every step's global batch (``training.draws``), and the EMA weights equal one process's at batch 2."""
    import torch

    _onestep(toy, tmp_path, "two", 2)
    _onestep(toy, tmp_path, "one", 1)
    a, b = (torch.load(tmp_path / name / "cache" / "pairs.pt") for name in ("two", "one"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)
    assert not list((tmp_path / "two" / "cache").glob("*.shard*"))  # shards merged and removed
    two, one = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    assert two.keys() == one.keys() and max(float((two[k] - one[k]).abs().max()) for k in one) < 1e-6
    ckpt = tmp_path / "two" / "checkpoints" / "step_0000002"
    assert (ckpt / "random_states_0.pkl").exists() and (ckpt / "random_states_1.pkl").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_onestep_under_two_processes_resumes_bit_exactly(toy, tmp_path):
    """Interrupted after its step-2 checkpoint and resumed, a two-process run ends with the weights of one that never
    stopped.  About 15 s: slow only to keep the default suite within 5 minutes."""
    _onestep(toy, tmp_path, "straight", 2, checkpoint_every=1)
    _onestep(toy, tmp_path, "resumed", 2, checkpoint_every=1, max_steps=2)
    _onestep(toy, tmp_path, "resumed", 2, checkpoint_every=1, resume="latest")
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(straight[k].equal(resumed[k]) for k in straight)

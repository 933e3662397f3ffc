"""The one-step stages' teacher ODE pairs (noise, prompt -> x0 target; stage 5: + control image), made once per
settings, in shards by every process, and shared through a file (``pairs_path``) whose settings are recorded beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from training.control import extract_control
from training.data import Bank
from training.models import freeze, load_part
from training.sampling import ddim_sample
from training.shards import make_once
from training.stages.common import decode_unet_samples


@torch.no_grad()
def make_pairs(
    cfg, bank: Bank, teacher, teacher_cn, scheduler, vae, uncond, device, rank: int = 0, world: int = 1
) -> dict:
    """Teacher ODE pairs: noise (N, 4, h, w), prompt embeds, x0 target and, with a ControlNet, the control image
    (N, 3, H, W) in [0, 1], extracted from an independent teacher sample for the same prompt (``control_source:
    teacher``; the paper: controls from the teacher's outputs) or from the dataset image the prompt belongs to
    (``data``: real layouts, as the ControlNet will meet at inference).

    With a ControlNet the target is either the teacher with its ControlNet following that control from the pair's
    noise (``control_target: ode``) or the very image the control was extracted from (``source``: its noise is
    independent of the pair's, so only the control can tell the student where the edges go, as at inference, where
    the control and the noise are unrelated; no second ODE solve).

    ``rank`` of ``world`` processes solves only chunks ``rank``, ``rank + world``, ... of 64 pairs but draws the random
    numbers of every chunk, so ``merge_pair_shards`` of all ranks' results equals one process's pairs exactly; with
    ``world > 1`` the result has a ``chunk`` column for that merge."""
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    out = {k: [] for k in ("noise", "embeds", "target", "control", "chunk")}
    shape = bank.tensors["latents"].shape[1:]
    teacher_refs = teacher_cn is not None and cfg.control_source != "data"
    for chunk, i in enumerate(range(0, cfg.num_pairs, 64)):
        n = min(64, cfg.num_pairs - i)
        index = torch.randint(len(bank), (n,), generator=gen)
        noise = torch.randn((n, *shape), generator=gen).to(device)
        ref_noise = torch.randn((n, *shape), generator=gen).to(device) if teacher_refs else None
        if chunk % world != rank:
            continue
        if world > 1:
            out["chunk"].append(torch.full((n,), chunk))
        embeds = bank.tensors["embeds"][index].to(device).float()
        control = None
        if teacher_cn is not None:
            if cfg.control_source == "data":  # the dataset image the prompt describes (its VAE reconstruction)
                ref = bank.tensors["latents"][index].to(device)
            else:
                ref = ddim_sample(teacher, scheduler.config, ref_noise, embeds, uncond, cfg.ode_steps, cfg.guidance)
            control = extract_control(decode_unet_samples(vae, ref) * 2 - 1, cfg.control_kind)
            out["control"].append(control.half().cpu())
        if control is not None and cfg.control_target == "source":
            target = ref
        else:
            target = ddim_sample(
                teacher, scheduler.config, noise, embeds, uncond, cfg.ode_steps, cfg.guidance, teacher_cn, control
            )
        for k, v in (("noise", noise), ("embeds", embeds), ("target", target)):
            out[k].append(v.cpu())
    return {k: torch.cat(v) for k, v in out.items() if v}


def merge_pair_shards(shards: list[dict]) -> dict:
    """The ranks' ``make_pairs`` results as one process's: rows in chunk order, without the ``chunk`` column (one
    process's pairs, which have none, as they are)."""
    if len(shards) == 1 and "chunk" not in shards[0]:
        return shards[0]
    merged = {k: torch.cat([shard[k] for shard in shards if k in shard]) for k in shards[0]}
    order = torch.sort(merged.pop("chunk"), stable=True).indices
    return {k: v[order] for k, v in merged.items()}


PAIR_SETTINGS = ("teacher", "seed", "num_pairs", "ode_steps", "guidance")
CONTROL_PAIR_SETTINGS = ("teacher_controlnet", "control_kind", "control_source", "control_target")


def pair_settings(cfg, controlnet_mode: bool) -> dict:
    """The config fields a pairs file is made from (written beside it as ``<name>.json``); ``pairs_teacher`` only
    when set, so that records written before it existed still match."""
    keys = (
        PAIR_SETTINGS
        + (CONTROL_PAIR_SETTINGS if controlnet_mode else ())
        + (("pairs_teacher",) * bool(cfg.pairs_teacher))
    )
    return json.loads(json.dumps({k: getattr(cfg, k) for k in keys}, default=str))  # as the record reads back


def check_pair_settings(pairs_path: Path, settings: dict) -> None:
    """Stop before any work when an existing pairs file (shared through ``pairs_path``) was made with other settings:
    reusing it would silently train on pairs the config does not describe.  Files without a settings record (written
    before it existed) are trusted."""
    recorded_path = _settings_path(pairs_path)
    if not (pairs_path.exists() and recorded_path.exists()):
        return
    recorded = json.loads(recorded_path.read_text())
    differ = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
    if differ:
        detail = ", ".join(f"{k}: {old!r} there, {new!r} here" for k, (old, new) in differ.items())
        raise ValueError(
            f"pairs file {pairs_path} was made with other settings ({detail}); give this run its own pairs_path "
            f"or delete the file to make it again"
        )


def _settings_path(pairs_path: Path) -> Path:
    return pairs_path.with_suffix(".json")


def load_or_solve_pairs(cfg, run, bank: Bank, teacher, teacher_cn, scheduler, vae, uncond, controlnet_mode) -> Bank:
    """The pairs of ``cfg`` (``pairs_path``, default ``<output_dir>/cache/pairs.pt``), solved first when missing: each
    process solves its share of the chunks (``make_pairs``), the main process merges the shards and records the
    settings.  Returned memory-mapped (a machine's processes share one copy through the page cache)."""
    acc, device = run.accelerator, run.device
    pairs_path = Path(cfg.pairs_path or run.out / "cache" / "pairs.pt")
    settings = pair_settings(cfg, controlnet_mode)
    check_pair_settings(pairs_path, settings)
    recorded = pairs_path.exists()

    def solve(rank: int, world: int) -> dict:  # each process solves its chunks of 64 pairs
        solver = teacher
        if cfg.pairs_teacher:
            solver = freeze(load_part(cfg.pairs_teacher, "unet")).to(device, run.weight_dtype)
        return make_pairs(cfg, bank, solver, teacher_cn, scheduler, vae, uncond, device, rank, world)

    make_once(acc, pairs_path, solve, merge_pair_shards)
    if not recorded and acc.is_main_process:
        _settings_path(pairs_path).write_text(json.dumps(settings, indent=2))
    acc.wait_for_everyone()
    return Bank(torch.load(pairs_path, mmap=True))

"""The loop every stage shares: accelerator, optimisers, resume, checkpoints, logging, validation, final save.

A stage builds its models, hands the trainable ones to ``Runner.prepare``, and calls ``Runner.run(step_fn,
validate_fn)``.  ``step_fn()`` does one optimisation step (all of its gradient-accumulation micro-batches) and returns
a dict of floats to log; ``validate_fn()`` returns sample images (N, 3, H, W) in [0, 1].  The runner never touches a
device explicitly: everything goes through ``accelerator.device``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from training.checkpoint import TrainState, resolve_resume, save_checkpoint
from training.config import TrainConfig, save_config, to_dict
from training.draws import StepDraws
from training.images import make_grid, save_image


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _fresh_accelerate_state() -> None:
    """Let several stages run in one process (the miniature, tests) with different mixed-precision settings:
    accelerate keeps a process-wide singleton state that refuses a second configuration.  Only outside a
    distributed launch, where the state is per run anyway."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)


class Runner:
    def __init__(self, cfg: TrainConfig, name: str):
        self.cfg, self.name = cfg, name
        self.out = Path(cfg.output_dir)
        _fresh_accelerate_state()
        self.accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.collective_timeout_s))],
        )
        self.accelerator.print(f"[{name}] {self.accelerator.state.distributed_type} x{self.accelerator.num_processes}")
        set_seed(cfg.seed, device_specific=True)
        self.state = TrainState()
        self.accelerator.register_for_checkpointing(self.state)
        acc = self.accelerator
        self.draws = StepDraws(cfg.seed, cfg.batch_size, acc.process_index, acc.num_processes, cfg.grad_accum)
        self.emas: dict[str, EMAModel] = {}
        self.timing: dict[str, float] = {}
        if self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml")
            self.accelerator.init_trackers(name, config=_flat(to_dict(cfg)))

    # ---- building ---------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def weight_dtype(self) -> torch.dtype:
        """dtype for frozen models: the mixed-precision dtype, trained models stay float32."""
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.accelerator.mixed_precision, torch.float32)

    def optimizer(self, params, lr: float | None = None) -> torch.optim.Optimizer:
        cfg, lr = self.cfg, lr or self.cfg.lr
        params = [p for p in params if p.requires_grad]
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}")

    def lr_scheduler(self, optimizer):
        return get_scheduler(
            self.cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=self.cfg.lr_warmup_steps * self.accelerator.num_processes,
            num_training_steps=self.cfg.max_steps * self.accelerator.num_processes,
        )

    def prepare(self, *objects):
        return self.accelerator.prepare(*objects)

    def add_ema(self, name: str, model: torch.nn.Module) -> None:
        """Track an EMA of ``model`` (when ``ema_decay`` is set); checkpointed and used for the final save."""
        if self.cfg.ema_decay:
            ema = EMAModel(self.unwrap(model).parameters(), decay=self.cfg.ema_decay)
            ema.to(self.device)
            self.emas[name] = ema
            self.accelerator.register_for_checkpointing(ema)

    def unwrap(self, model):
        return self.accelerator.unwrap_model(model)

    def accumulated_step(self, model, optimizer, scheduler, phase: int, micro_loss: Callable) -> list:
        """One optimiser step over ``grad_accum`` micro-batches, in every stage (written out, so that stages which
        alternate several optimisers fit, where ``accelerator.accumulate``'s single counter does not).
        ``micro_loss(draws, micro)`` computes micro-batch ``micro``'s loss (a mean over its rows) and returns
        ``(loss, anything)``; ``draws`` are its rows of the global batch, in phase ``phase`` of the step
        (``training.draws``).  Gradients are synchronised across processes
        only on the last micro-batch; ``accelerator.backward`` divides each loss by ``grad_accum``, so the step
        follows the mean over the global batch.  Returns the micro-batches' second values."""
        acc, outs = self.accelerator, []
        for micro in range(self.cfg.grad_accum):
            draws = self.draws.start(self.state.step, phase, micro)
            last = micro == self.cfg.grad_accum - 1
            with contextlib.nullcontext() if last else acc.no_sync(model):
                loss, out = micro_loss(draws, micro)
                acc.backward(loss)
            outs.append(out)
        if self.cfg.max_grad_norm:
            acc.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return outs

    # ---- running ----------------------------------------------------------------------------------------

    def resume(self) -> None:
        path = resolve_resume(self.out, self.cfg.resume)
        if path is not None:
            try:
                self.accelerator.load_state(str(path))
            except (RuntimeError, ValueError, KeyError) as error:
                raise RuntimeError(
                    f"checkpoint {path} does not match the models and optimisers this config builds (a module "
                    "added or removed since it was saved, such as a GAN head turned on after the warm-up?). Start a "
                    "new run from its exported weights instead (e.g. the one-step stage's `student:` set to a "
                    f"`final/unet` folder). Cause: {error}"
                ) from error
            self.accelerator.print(f"[{self.name}] resumed from {path} at step {self.state.step}")

    def run(
        self,
        step_fn: Callable[[], dict],
        validate_fn: Callable[[], torch.Tensor] | None = None,
        models: dict | None = None,
    ) -> None:
        """Train from ``state.step`` to ``max_steps``; ``models`` (name -> model) are saved under ``final/``."""
        cfg, acc = self.cfg, self.accelerator
        self.resume()
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.state.step,
            disable=not (cfg.progress and acc.is_local_main_process),
            desc=self.name,
        )
        start = time.perf_counter()
        first = self.state.step
        while self.state.step < cfg.max_steps:
            began = time.perf_counter()
            logs = step_fn()
            for name, ema in self.emas.items():
                ema.step(self.unwrap(models[name]).parameters())
            self._time_step(time.perf_counter() - began if self.device.type != "cuda" else None, began)
            self.state.step += 1
            bar.update(1)
            if self.state.step % cfg.log_every == 0 or self.state.step == cfg.max_steps:
                self.log(logs)
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()})
            if cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
                save_checkpoint(acc, self.out, self.state.step, cfg.checkpoint_limit)
            if validate_fn and cfg.validate_every and self.state.step % cfg.validate_every == 0:
                self.validate(validate_fn)
            if cfg.snapshot_every and self.state.step % cfg.snapshot_every == 0 and self.state.step < cfg.max_steps:
                self.save_models(models or {}, self.out / "snapshots" / f"step_{self.state.step:07d}")
        bar.close()
        self.timing["seconds"] = time.perf_counter() - start
        self.timing["steps"] = self.state.step - first
        if validate_fn:
            self.validate(validate_fn)
        self.finish(models or {})

    def _time_step(self, seconds: float | None, began: float) -> None:
        """Keep the first step's time (allocator and kernel warm-up) apart from the rest: ``timing`` gets
        ``first_step_seconds`` and ``steady_step_seconds`` (the mean of the others; ``training.cost`` reads it).  On
        CUDA the step is timed after a synchronise."""
        if seconds is None:
            torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - began
        if "first_step_seconds" not in self.timing:
            self.timing["first_step_seconds"] = seconds
            return
        n = self.timing.get("steady_steps", 0)
        mean = self.timing.get("steady_step_seconds", 0.0)
        self.timing["steady_steps"], self.timing["steady_step_seconds"] = n + 1, (mean * n + seconds) / (n + 1)

    def log(self, logs: dict) -> None:
        logs = {k: float(v) for k, v in logs.items()}
        self.accelerator.log(logs, step=self.state.step)
        if self.accelerator.is_main_process:
            with open(self.out / "losses.jsonl", "a") as f:
                f.write(json.dumps({"step": self.state.step, **logs}) + "\n")

    @torch.no_grad()
    def validate(self, validate_fn) -> None:
        """Sample grid from the in-memory modules (main process), to TensorBoard and ``samples/step_N.png``."""
        acc = self.accelerator
        if acc.is_main_process:
            images = validate_fn().float().clamp(0, 1).cpu()
            grid = make_grid(images, nrow=max(1, int(math.sqrt(len(images)))))
            (self.out / "samples").mkdir(exist_ok=True)
            save_image(grid, self.out / "samples" / f"step_{self.state.step:07d}.png")
            tracker = acc.get_tracker("tensorboard", unwrap=True)
            if tracker is not None:
                tracker.add_image("samples", grid, self.state.step)
        acc.wait_for_everyone()

    def finish(self, models: dict) -> None:
        """Save the final models (EMA weights where tracked) as diffusers folders under ``final/<name>``."""
        self.save_models(models, self.out / "final")
        if self.accelerator.is_main_process:
            (self.out / "timing.json").write_text(json.dumps(self.timing))
        self.accelerator.end_training()

    def save_models(self, models: dict, folder: Path) -> None:
        """``models`` (name -> model) as diffusers folders ``folder/<name>``, with their EMA weights where tracked
        (the live weights are put back afterwards); main process only, the others wait."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            for name, model in models.items():
                model = self.unwrap(model)
                ema = self.emas.get(name)
                if ema is not None:
                    ema.store(model.parameters())
                    ema.copy_to(model.parameters())
                model.save_pretrained(folder / name)
                if ema is not None:
                    ema.restore(model.parameters())
        acc.wait_for_everyone()

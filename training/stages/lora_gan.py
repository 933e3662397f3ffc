"""Stage 4c (paper section 4): a short fine-tune of the one-step UNet with a very-low-rank LoRA and a Projected-GAN
loss (StyleGAN-T / ADD settings).

The one-step student (``student``: stage 4's ``final/unet``) is frozen and gets a LoRA of rank ``lora_rank`` on its
attention projections (``training.lora``).  A Projected-GAN discriminator (``training.projected_gan``: trainable heads
over the frozen ``feature_net``'s maps, prompt-conditioned by projection) tells real latents (``real: data``, the
dataset's, or ``teacher``, the pairs' multi-step teacher samples) from the student's one-step samples; hinge losses.
The student's loss is ``gan_weight`` * the generator's hinge loss + ``fm_weight`` * stage 4's feature matching towards
the teacher's ODE pairs (ADD's distillation term, which keeps the fine-tune near the teacher).  Both updates follow
``grad_accum`` and the global-batch draws of ``training.draws``.  Output: ``final/unet`` (the LoRA merged: plain
diffusers weights) and ``final/lora`` (the adapter alone, PEFT format).  Config: ``OneStepConfig``'s teacher, pairs and
feature options, plus the fields below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft import get_peft_model_state_dict
from safetensors.torch import save_file

from training.config import check_choice, parse_args
from training.draws import StepDraws
from training.features import feature_network
from training.lora import ATTENTION_PROJECTIONS, add_lora, merged_state_dict
from training.losses import FEATURE_DISTANCES, hinge_discriminator_loss, hinge_generator_loss
from training.models import recipe_from, student_unet
from training.projected_gan import ProjectedDiscriminator
from training.runner import Runner
from training.sampling import onestep_sample
from training.stages.common import decode_unet_samples, mean_logs
from training.stages.onestep import LATENT_DISTANCES, OneStepConfig, Teachers, check_config

REAL_SOURCES = ("data", "teacher")


@dataclass
class LoRAGANConfig(OneStepConfig):
    lora_rank: int = 4  # "very low rank"
    lora_alpha: float = 0.0  # 0: the rank (scale 1)
    lora_targets: list = field(default_factory=lambda: list(ATTENTION_PROJECTIONS))
    real: str = "data"  # data: the dataset's latents | teacher: the pairs' teacher samples
    disc_lr: float = 1e-4
    disc_hidden: int = 64
    gan_weight: float = 1.0
    fm_weight: float = 1.0  # 0: GAN only
    feature_net: str = "unet_encoder"  # the projection network (frozen), also the feature matching's
    max_steps: int = 200


class LoRAGANTrainer:
    def __init__(self, cfg: LoRAGANConfig, run: Runner):
        self.cfg, self.run, self.device = cfg, run, run.device
        # 1. models: frozen teachers, the one-step UNet with its LoRA, the projection network and the heads
        self.teachers = t = Teachers.load(cfg, self.device, run.weight_dtype, controlnet_mode=False)
        self.unet = student_unet(t.unet, cfg.student, recipe_from(cfg.recipe)).to(self.device)
        lora = add_lora(self.unet, cfg.lora_rank, cfg.lora_alpha or None, cfg.lora_targets)
        self.features = feature_network(cfg.feature_net, t.vae, t.unet, t.uncond, cfg.feature_model)
        self.fm_distance = FEATURE_DISTANCES[cfg.feature_distance]
        # 2. data: real latents and the teacher's ODE pairs
        self.bank, self.pairs = t.data(cfg, run)
        with torch.no_grad():
            maps = self.features(self.pairs.tensors["target"][:1].float().to(self.device))
        disc = ProjectedDiscriminator([m.shape[1] for m in maps], t.uncond.shape[-1], cfg.disc_hidden).to(self.device)
        # 3. optimisers (the LoRA, the heads), accelerate
        opt_g, opt_d = run.optimizer(lora), run.optimizer(disc.parameters(), cfg.disc_lr)
        sched_g = run.lr_scheduler(opt_g)
        self.unet_ddp, self.disc, self.opt_g, self.opt_d, self.sched_g = run.prepare(
            self.unet, disc, opt_g, opt_d, sched_g
        )
        self.disc_plain = run.unwrap(self.disc)
        self.ac = t.scheduler.alphas_cumprod.to(self.device)

    def generate(self, batch: dict, module=None) -> torch.Tensor:
        """One-step x0 (B, 4, h, w) float32 of the LoRA'd UNet from the batch's noise and prompts."""
        unet = module or self.unet_ddp
        return onestep_sample(unet, batch["noise"], batch["embeds"], self.ac, self.cfg.student_timestep)

    def real_rows(self, draws: StepDraws) -> dict:
        """Real latents (B, 4, h, w) and their prompts' embeddings."""
        if self.cfg.real == "teacher":
            rows = self.pairs.take(draws.randint(len(self.pairs)), self.device)
            return {"latents": rows["target"], "embeds": rows["embeds"]}
        return draws.sample(self.bank, self.device)

    def generator_step(self) -> tuple[dict, list]:
        """The LoRA's step: hinge generator loss through the frozen heads + feature matching to the pairs' targets.
        Also returns each micro-batch's (prompt embeds, detached samples) for the discriminator's step."""
        cfg = self.cfg

        def micro_loss(draws: StepDraws, micro: int):
            batch = self.pairs.take(draws.randint(len(self.pairs)), self.device)
            with self.run.accelerator.autocast():
                x = self.generate(batch)
                maps = self.features(x)
                self.disc_plain.requires_grad_(False).eval()  # no head gradients; one power iteration per step
                gan = hinge_generator_loss(self.disc_plain(maps, batch["embeds"]))
                self.disc_plain.requires_grad_(True).train()
                with torch.no_grad():
                    target = batch["target"]
                    target_maps = self.features(target)
                fm = self.fm_distance(maps, target_maps, cfg.feature_weights).mean()
                fm = fm + cfg.latent_weight * LATENT_DISTANCES[cfg.latent_distance](x, target).mean()
                loss = cfg.gan_weight * gan + cfg.fm_weight * fm
            logs = {"gan_g": gan.item(), "fm": fm.item(), "loss": loss.item()}
            return loss, (logs, batch["embeds"], x.detach())

        out = self.run.accumulated_step(self.unet_ddp, self.opt_g, self.sched_g, 0, micro_loss)
        return mean_logs([logs for logs, _, _ in out]), [(embeds, x) for _, embeds, x in out]

    def discriminator_step(self, fakes: list) -> dict:
        """The heads' step: real rows against the generator step's samples (the same micro-batches)."""

        def micro_loss(draws: StepDraws, micro: int):
            real = self.real_rows(draws)
            embeds, fake = fakes[micro]
            self.disc_plain.train(micro == 0)
            with torch.no_grad():
                maps = [torch.cat(pair) for pair in zip(self.features(real["latents"]), self.features(fake))]
            with self.run.accelerator.autocast():
                real_logits, fake_logits = self.disc(maps, torch.cat([real["embeds"], embeds])).chunk(2)
                loss = hinge_discriminator_loss(real_logits, fake_logits)
            return loss, {"d_loss": loss.item(), "d_real": real_logits.mean().item()}

        logs = self.run.accumulated_step(self.disc, self.opt_d, None, 1, micro_loss)
        self.disc_plain.train()
        return mean_logs(logs)

    def step(self) -> dict:
        logs, fakes = self.generator_step()
        return {**logs, **self.discriminator_step(fakes)}

    @torch.no_grad()
    def validate(self) -> torch.Tensor:
        """The in-memory LoRA'd student's samples for the first pairs, (N, 3, H, W) in [0, 1]."""
        n = min(self.cfg.num_validation, len(self.pairs))
        batch = {k: v[:n].float().to(self.device) for k, v in self.pairs.tensors.items()}
        return decode_unet_samples(self.teachers.vae, self.generate(batch, self.run.unwrap(self.unet_ddp)))

    def train(self) -> Runner:
        run = self.run
        run.run(self.step, self.validate)
        if run.accelerator.is_main_process:
            self.save()
        run.accelerator.wait_for_everyone()
        return run

    def save(self) -> None:
        """``final/unet``: a plain UNet with the LoRA merged; ``final/lora``: the adapter (PEFT keys, safetensors)."""
        unet = self.run.unwrap(self.unet_ddp)
        plain = student_unet(self.teachers.unet, self.cfg.student, recipe_from(self.cfg.recipe))
        plain.load_state_dict(merged_state_dict(unet))
        plain.save_pretrained(self.run.out / "final" / "unet")
        (self.run.out / "final" / "lora").mkdir(parents=True, exist_ok=True)
        adapter = {k: v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}
        save_file(adapter, self.run.out / "final" / "lora" / "adapter_model.safetensors")


def main(argv=None) -> Runner:
    cfg = parse_args(LoRAGANConfig, argv, __doc__)
    check_config(cfg)
    check_choice("real", cfg.real, REAL_SOURCES)
    if not cfg.student:
        raise ValueError("the LoRA fine-tune needs student: the one-step UNet folder (stage 4's final/unet)")
    run = Runner(cfg, "lora_gan")
    return LoRAGANTrainer(cfg, run).train()


if __name__ == "__main__":
    main()

"""``DecoderTrainer``'s two updates, one at a time, on the toy teacher (stage 2): the decoder step moves the tiny
autoencoder and not the discriminator, the discriminator step the reverse; the GAN enters at ``gan_start``; the
encoder trains only when ``encoder_weight`` asks."""

import pytest
import torch

from training.config import from_dict
from training.runner import Runner
from training.stages.distill_decoder import DecoderTrainer, DistillDecoderConfig

TINY = {"encoder_block_out_channels": [8, 8, 8], "decoder_block_out_channels": [8, 8, 8],
        "num_encoder_blocks": [1, 1, 1], "num_decoder_blocks": [1, 1, 1]}  # fmt: skip


def _trainer(toy, tmp_path, **extra) -> DecoderTrainer:
    values = dict(
        output_dir=str(tmp_path), teacher=str(toy.teacher), data=toy.data_cfg(), batch_size=2, grad_accum=2,
        max_steps=2, gan_start=1, gan_weight=0.5, encoder_weight=0.25, teacher_samples=4, sample_steps=2,
        disc_channels=[8, 16], downsample=4, tiny_overrides=TINY, num_validation=2, progress=False,
    )  # fmt: skip
    cfg = from_dict(DistillDecoderConfig, {**values, **extra})
    return DecoderTrainer(cfg, Runner(cfg, "decoder"))


@pytest.fixture(scope="module")
def trainer(toy, tmp_path_factory) -> DecoderTrainer:
    return _trainer(toy, tmp_path_factory.mktemp("decoder"))


def _snapshot(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _moved(module, before) -> bool:
    return any(not torch.equal(p, b) for p, b in zip(module.parameters(), before))


def test_the_latent_pool_is_the_datas_latents_then_the_teachers_samples_with_their_decodes(trainer):
    data = trainer.bank.tensors["latents"]
    assert trainer.pool.shape == (len(data) + 4, 4, 8, 8) and torch.equal(trainer.pool[: len(data)], data.float())
    decoded = trainer.latent_bank.tensors["teacher_pixels"]
    assert decoded.shape == (len(trainer.pool), 3, 32, 32) and decoded.dtype == torch.float16
    torch.testing.assert_close(decoded[-2:].float(), trainer.decode_teacher(trainer.pool[-2:]), atol=1e-3, rtol=0)


def test_decoder_step_moves_the_tiny_autoencoder_and_not_the_discriminator(trainer):
    trainer.run.state.step = 0  # before gan_start: no GAN term
    tiny, disc = (_snapshot(trainer.tiny.decoder), _snapshot(trainer.tiny.encoder)), _snapshot(trainer.disc)
    logs, judged = trainer.decoder_step()
    assert _moved(trainer.tiny.decoder, tiny[0]) and _moved(trainer.tiny.encoder, tiny[1])
    assert not _moved(trainer.disc, disc)
    assert logs["g_loss"] == 0 and logs["l1_down"] > 0 and logs["encoder_mse"] > 0
    assert logs["loss"] == pytest.approx(logs["l1_down"] + 0.25 * logs["encoder_mse"], rel=1e-6)
    assert len(judged) == 2 and all(real.shape == fake.shape == (2, 3, 32, 32) for real, fake in judged)
    assert not any(fake.requires_grad for _, fake in judged)


def test_discriminator_step_moves_only_the_discriminator_once_the_gan_is_on(trainer):
    trainer.run.state.step = 0
    assert "d_loss" not in trainer.step()
    trainer.run.state.step = trainer.cfg.gan_start
    logs, judged = trainer.decoder_step()
    assert logs["g_loss"] != 0
    assert logs["loss"] == pytest.approx(logs["l1_down"] + 0.5 * logs["g_loss"] + 0.25 * logs["encoder_mse"], rel=1e-6)
    tiny, disc = _snapshot(trainer.tiny), _snapshot(trainer.disc)
    d_logs = trainer.discriminator_step(judged)
    assert _moved(trainer.disc, disc) and not _moved(trainer.tiny, tiny) and d_logs["d_loss"] > 0
    assert trainer.disc_plain.training and all(p.requires_grad for p in trainer.disc.parameters())
    assert "d_loss" in trainer.step()


def test_the_encoder_stays_without_encoder_weight(toy, tmp_path):
    trainer = _trainer(toy, tmp_path, encoder_weight=0.0, teacher_samples=0, grad_accum=1)
    encoder, decoder = _snapshot(trainer.tiny.encoder), _snapshot(trainer.tiny.decoder)
    logs, _ = trainer.decoder_step()
    assert not _moved(trainer.tiny.encoder, encoder) and _moved(trainer.tiny.decoder, decoder)
    assert logs["encoder_mse"] == 0 and not any(p.requires_grad for p in trainer.tiny.encoder.parameters())


def test_validate_puts_the_teachers_decodes_above_the_tiny_decoders(trainer):
    images = trainer.validate()
    assert images.shape == (4, 3, 32, 32) and 0 <= float(images.min()) <= float(images.max()) <= 1

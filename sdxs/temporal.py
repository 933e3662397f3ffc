"""Live video that holds still: one stream's history, and what the pipeline does with it batch by batch (issue 23).

A ``TemporalState`` belongs to one stream (a WebSocket session, a Gradio webcam viewer) and rides in its requests
(``GenerationRequest.temporal``).  The pipeline reads and writes it only in ``run``, on its model thread, batch after
batch, so a frame always sees its stream's previous frame.  Each remedy is a ``GenerationParams`` field, 0 = off:

* ``feedback`` (latent feedback): in image mode the previous output latent is blended into the frame's encoded
  latent before it is noised, ``z + w (z_prev - z)``; the one-step model then denoises the blend, so the picture
  stays sharp.  In text, sketch and edge modes the input latent is noise at the text timestep (a blend there would
  be lost), so the output latent is blended instead: an exponential moving average of the stream's outputs.
* ``bank``: the attention bank (``sdxs.bank``): self-attention also attends to a few past frames' keys and values.
* ``transition_frames``: a change of prompt interpolates the prompt embeddings, a change of seed the noise (slerp),
  a change of style fades the output latent from the last frame before the change, over that many frames.

A stream is *settled* for its parameters (``settled_for``) when no change is under way and its input has been still
(the same, or nearly: the server judges, ``note_input``) for ``settle_frames`` generated frames, so that what feedback
and the bank remember of older pictures is spent: only then may the server repeat a picture instead of generating
(REUSED, SKIPPED), and until then it flags its answers SETTLING (docs/protocol.md).

Rows never mix: every blend is row by row with the row's own state.  A batch in which no row has history to use, or
no row has a remedy on, runs no extra tensor operation at all (``LiveBatch.gather`` returns None).

Latents are in the UNet's space (after the VAE's scaling factor), (1, C, h, w) per stream, in the model's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from sdxs import bank as banks
from sdxs.params import GenerationParams, Mode

_UNSET = object()
SETTLED_REMAINDER = 0.02  # latent feedback has settled when older pictures weigh less than this


def settle_frames(params: GenerationParams) -> int:
    """Generated frames of a still input after which nothing older is left to see: feedback's weight of the older
    pictures (``feedback ** k``) is under ``SETTLED_REMAINDER``, and the attention bank holds only still frames."""
    frames = 0
    if params.feedback > 0:
        frames = math.ceil(math.log(SETTLED_REMAINDER) / math.log(params.feedback))
    if params.bank > 0:
        frames = max(frames, banks.BANK_FRAMES * banks.BANK_INTERVAL)
    return frames


def lerp(start: torch.Tensor, end: torch.Tensor, weight: float) -> torch.Tensor:
    return torch.lerp(start.float(), end.float(), weight).to(end.dtype)


def slerp(start: torch.Tensor, end: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation of two (1, ...) noise tensors (their norm stays that of Gaussian noise)."""
    a, b = start.flatten().double(), end.flatten().double()
    cos = torch.dot(a, b) / (a.norm() * b.norm())
    theta = torch.arccos(cos.clamp(-1.0, 1.0)).clamp(min=1e-4)  # two seeds' noise: about pi/2; no host sync
    mixed = (torch.sin((1 - weight) * theta) * a + torch.sin(weight * theta) * b) / torch.sin(theta)
    return mixed.view(end.shape).to(end.dtype)


class Track:
    """One input that changes now and then (a prompt's embedding, a seed's noise): which one is in force (``key``),
    and while a change is under way the value it started from and how far it has come."""

    def __init__(self) -> None:
        self.key: Hashable = _UNSET
        self.start: torch.Tensor | None = None  # the value shown when the change began; None: settled
        self.now: torch.Tensor | None = None  # the blend shown last (None: exactly the key's own value)
        self.step = 0

    @property
    def moving(self) -> bool:
        return self.start is not None

    def advance(self, key: Hashable, target: torch.Tensor, frames: int, source: Callable[[Any], torch.Tensor],
                blend: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> torch.Tensor:
        """The value for this frame: ``target`` when settled, else a blend from where the change began to it, one
        ``1 / frames`` step per call.  ``source(key)`` gives a key's own value (the previous one, when a change
        begins while settled)."""
        if self.key is not _UNSET and key != self.key and frames > 0:
            self.start = self.now if self.now is not None else source(self.key).clone()
            self.step = 0
        self.key = key
        if self.start is None:
            return target
        self.step += 1
        if frames <= 0 or self.step >= frames:
            self.start = self.now = None
            return target
        self.now = blend(self.start, target, self.step / frames)
        return self.now


class Fade:
    """A style change: the weight of the previous output latent, from 1 - 1/frames down to 0 over ``frames``."""

    def __init__(self) -> None:
        self.key: Hashable = _UNSET
        self.step = 0
        self.frames = 0  # of the fade under way; 0: none

    @property
    def moving(self) -> bool:
        return self.frames > 0

    def advance(self, key: Hashable, frames: int) -> float:
        if self.key is not _UNSET and key != self.key and frames > 0:
            self.step, self.frames = 0, frames
        self.key = key
        if not self.frames:
            return 0.0
        self.step += 1
        weight = 1.0 - self.step / self.frames
        if weight <= 0 or frames <= 0:
            self.frames = 0
            return 0.0
        return weight


class TemporalState:
    """One stream's history.  Tensors live on the pipeline's device; ``release`` frees them (any thread)."""

    def __init__(self) -> None:
        self.device: torch.device | None = None
        self.latent: torch.Tensor | None = None  # (1, C, h, w): the last output latent (after blending)
        self.bank = banks.FeatureBank()
        self.prompt, self.seed, self.style = Track(), Track(), Fade()
        self.frames = 0  # frames generated
        self.still = 0  # generated frames in a row whose input was still (the server's judgement: note_input)
        self.closed = False

    @property
    def settled(self) -> bool:
        """No change of prompt, seed or style is under way."""
        return not (self.prompt.moving or self.seed.moving or self.style.moving)

    def settled_for(self, params: GenerationParams) -> bool:
        """Settled, and the input was still for ``settle_frames(params)`` frames: the same input again would give
        (nearly) the picture shown, so the server may repeat it."""
        return self.settled and self.still >= settle_frames(params)

    def note_input(self, still: bool) -> None:
        """A frame is about to be generated; ``still``: its input and parameters are those of the frame before (or
        nearly: the skip filter's measure)."""
        self.still = self.still + 1 if still else 0

    @property
    def nbytes(self) -> int:
        tracks = (self.prompt.start, self.prompt.now, self.seed.start, self.seed.now, self.latent)
        return self.bank.nbytes + sum(t.nbytes for t in tracks if t is not None)

    def release(self) -> None:
        """Free every tensor (the stream ended); a later frame would start afresh."""
        self.closed = True
        self._forget()

    def note(self, params: GenerationParams) -> None:
        """A frame generated without any remedy: remember the prompt, seed and style in force (so that turning smooth
        changes on later starts from them), end any change under way, drop what only a remedy needs."""
        self.prompt, self.seed, self.style = Track(), Track(), Fade()
        self.prompt.key, self.seed.key, self.style.key = params.prompt, params.seed, params.style
        self.latent = None
        if self.bank.keys is not None:
            self.bank.clear()
        self.frames += 1

    def _forget(self) -> None:
        self.latent = None
        self.bank.clear()
        self.prompt, self.seed, self.style = Track(), Track(), Fade()

    def _on(self, device: torch.device) -> None:
        """Before a batch: a state made on another device (its stream moved) starts afresh here."""
        if self.device != device:
            self._forget()
            self.device = device


class LiveBatch:
    """One batch's use of its rows' states, on the model thread, in ``SDXSPipeline.run``'s order: ``prompts``,
    ``noise``, ``feed_input``, ``attention``, ``finish``.  ``n`` real rows; tensors may have bucket padding after."""

    def __init__(self, params: Sequence[GenerationParams], states: Sequence[TemporalState | None], pipe: Any):
        self.params, self.states, self.pipe = list(params), list(states), pipe
        self.n = len(self.params)
        self.banked = any(s is not None and p.bank > 0 for p, s in zip(self.params, self.states))

    @classmethod
    def gather(cls, params: Sequence[GenerationParams], states: Sequence[TemporalState | None] | None,
               pipe: Any) -> LiveBatch | None:
        """None when no row has a state with a remedy on: the batch runs as without states."""
        if not states or not any(s is not None and uses_history(p) for p, s in zip(params, states)):
            for p, s in zip(params, states or ()):
                if s is not None:
                    s.note(p)
            return None
        for s in states:
            if s is not None:
                s._on(pipe.device)
        return cls(params, states, pipe)

    def _rows(self):
        return ((i, p, s) for i, (p, s) in enumerate(zip(self.params, self.states)) if s is not None)

    def prompts(self, embeds: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per row (1, 77, D) prompt embeddings -> the ones to use (interpolated while a prompt change is under way)."""
        out = list(embeds)
        for i, p, s in self._rows():
            out[i] = s.prompt.advance(p.prompt, embeds[i], p.transition_frames, self.pipe.encode_prompt, lerp)
        return out

    def noise(self, noise: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) per-seed noise -> slerped from the previous seed's rows while a seed change is under way."""
        rows = {}
        for i, p, s in self._rows():
            target = noise[i:i + 1]
            row = s.seed.advance(p.seed, target, p.transition_frames, self.pipe.noise, slerp)
            if row is not target:
                rows[i] = row
        if not rows:
            return noise
        noise = noise.clone()
        for i, row in rows.items():
            noise[i:i + 1] = row
        return noise

    def feed_input(self, encoded: torch.Tensor, image_rows: Sequence[int]) -> torch.Tensor:
        """Image mode: (len(image_rows), C, h, w) encoded latents, each blended with its stream's last output."""
        weights = [self._weight(i, self.params[i].feedback) for i in image_rows]
        return _blend(encoded, [self.states[i] for i in image_rows], weights, self.pipe._upload)

    def attention(self, rows: int, latent_side: int) -> dict[str, Any] | None:
        """The UNet's ``cross_attention_kwargs`` (``sdxs.bank``) for ``rows`` rows, or None when no row uses a bank."""
        if not self.banked:
            return None
        used = [s.bank if s is not None and p.bank > 0 else None for p, s in zip(self.params, self.states)]
        strengths = [p.bank for p in self.params]
        self._bank = banks.gather(used, strengths, self.pipe.bank_layers, latent_side, rows, self.pipe.dtype,
                                  self.pipe.device, self.pipe._upload)
        return {"bank": self._bank}

    def finish(self, x0: torch.Tensor) -> torch.Tensor:
        """After the one-step update: blend output latents (feedback outside image mode, style fades), then write
        every row's history (its latent, its bank's new slot).  ``x0``: (rows, C, h, w); returns it blended."""
        weights = []
        for i, p, s in ((i, p, self.states[i]) for i, p in enumerate(self.params)):
            fade = s.style.advance(p.style, p.transition_frames) if s is not None else 0.0
            own = p.feedback if p.mode is not Mode.image else 0.0
            weights.append(self._weight(i, max(own, fade)))
        x0 = torch.cat([_blend(x0[:self.n], self.states, weights, self.pipe._upload), x0[self.n:]]) if any(
            weights) else x0
        for i, p, s in self._rows():
            if s.closed:
                continue
            s.frames += 1
            keep = p.feedback > 0 or p.transition_frames > 0
            s.latent = x0[i:i + 1].clone() if keep else None
            if p.bank > 0 and self.banked:
                s.bank.write([(k[i], v[i]) for k, v in (self._bank["out"][layer]
                                                       for layer in range(len(self.pipe.bank_layers)))])
            elif s.bank.keys is not None:
                s.bank.clear()  # turned off: its memory goes now
        return x0

    def _weight(self, i: int, weight: float) -> float:
        s = self.states[i]
        return weight if s is not None and s.latent is not None else 0.0


def uses_history(params: GenerationParams) -> bool:
    return params.feedback > 0 or params.bank > 0 or params.transition_frames > 0


def _blend(latents: torch.Tensor, states: Sequence[TemporalState | None], weights: Sequence[float],
           upload: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Rows ``latents[i] + weights[i] * (states[i].latent - latents[i])``; the tensor itself when every weight is 0.
    ``upload``: a small CPU tensor to the latents' device without making the host wait (``SDXSPipeline._upload``)."""
    if not any(weights):
        return latents
    previous = torch.cat([s.latent if w else latents[i:i + 1] for i, (s, w) in enumerate(zip(states, weights))])
    w = upload(torch.tensor(weights, dtype=torch.float32)).view(-1, 1, 1, 1)
    return torch.lerp(latents.float(), previous.float(), w).to(latents.dtype)

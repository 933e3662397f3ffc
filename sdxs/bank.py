"""The attention bank: a few past frames' self-attention keys and values, per stream, attended to by the next frame.

StreamV2V (arXiv 2405.15757, section 3.2, "extended self-attention") keeps past frames' keys and values and
concatenates them to the current frame's in the UNet's self-attention layers, training-free.  Here:

* ``install(unet)`` puts a ``BankProcessor`` on every attention module of the UNet.  Without the ``bank``
  cross-attention kwarg it calls the processor it replaced, so a batch that uses no bank runs exactly what it ran
  before; cross-attention layers always do.
* ``FeatureBank`` is one stream's bank: ``BANK_FRAMES`` slots per self-attention layer, each the (N, C) keys and
  values of one frame (N tokens of the layer, C its width) in the model's dtype on its device, written as a ring every
  ``BANK_INTERVAL`` generated frames.  Its size is fixed (``bytes_per_stream``) and it is freed with the stream.
* ``gather`` stacks a batch's banks into per-layer (B, F*N, C) keys and values and a (B, F) bias: ``log(strength)``
  for a written slot, ``-inf`` for an empty one or a row without a bank.  These are inputs of the UNet call (a CUDA
  graph copies them into its static inputs on replay), never state kept by the processors.  Each self-attention
  layer adds the bias to its scores over the bank's tokens (0 over the frame's own): strength 1 is StreamV2V's
  extended attention, smaller strengths give the past less weight, and a row with no written slot attends to its
  own tokens only, as without a bank.  The layers put their frame's keys and values into the kwarg's ``out`` dict
  (graph outputs); ``FeatureBank.write`` copies a row's into its ring.
* Rows never mix: every row's keys, values and bias are its own stream's, and attention is computed per row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

BANK_FRAMES = 2  # slots per layer: the last frames remembered (23.6 MB a stream for SDXS-512 in fp16; bench/README)
BANK_INTERVAL = 1  # a slot is written every this many generated frames (StreamV2V's cache interval; 4 there)


class BankProcessor:
    """Attention processor: self-attention extended over a bank when the ``bank`` kwarg is given, else ``inner``."""

    def __init__(self, inner: Any, index: int | None):
        self.inner = inner  # the processor this one replaced (SDPA, xformers, ...)
        self.index = index  # position among the UNet's self-attention layers; None: a cross-attention module

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 bank: dict[str, Any] | None = None) -> torch.Tensor:
        if bank is None or self.index is None or encoder_hidden_states is not None or attention_mask is not None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        return self._extended(attn, hidden_states, temb, bank)

    def _extended(self, attn, hidden_states: torch.Tensor, temb: torch.Tensor | None, bank: dict[str, Any]):
        """diffusers' ``AttnProcessor2_0`` for self-attention, with the bank's keys and values after the frame's."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        bank["out"][self.index] = (key, value)  # (B, N, C) each: this frame's, for the streams' rings
        key = torch.cat([key, bank["keys"][self.index]], 1)  # (B, N + F*N, C)
        value = torch.cat([value, bank["values"][self.index]], 1)
        own = torch.zeros((batch, tokens), dtype=query.dtype, device=query.device)
        past = bank["bias"].to(query.dtype).repeat_interleave(tokens, dim=1)  # (B, F*N)
        mask = torch.cat([own, past], 1).view(batch, 1, 1, -1)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install(unet) -> list[tuple[int, int]]:
    """Put a ``BankProcessor`` on every attention module of ``unet`` (before ``torch.compile``; idempotent).  Returns
    the self-attention layers' (downsampling factor relative to the latent, channels), in index order."""
    processors, layers = {}, []
    for name, inner in unet.attn_processors.items():
        if isinstance(inner, BankProcessor):
            inner = inner.inner
        module = unet.get_submodule(name.removesuffix(".processor"))
        index = None
        if name.endswith("attn1.processor") and not module.is_cross_attention:
            index = len(layers)
            layers.append((_factor(name, unet), module.inner_dim))
        processors[name] = BankProcessor(inner, index)
    unet.set_attn_processor(processors)
    return layers


def _factor(name: str, unet) -> int:
    """How many times smaller than the latent the layer's feature map is (from its block's place in the UNet)."""
    match = re.match(r"(down_blocks|up_blocks)\.(\d+)\.", name)
    stages = len(unet.down_blocks)
    if match is None:  # the mid block, at the lowest resolution
        return 2 ** (stages - 1)
    i = int(match.group(2))
    return 2 ** (i if match.group(1) == "down_blocks" else stages - 1 - i)


class FeatureBank:
    """One stream's ring of past frames' keys and values per self-attention layer (allocated on first write)."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] | None = None  # per layer (BANK_FRAMES, N, C)
        self.values: list[torch.Tensor] | None = None
        self.written = 0  # slots written so far (the ring holds min(written, BANK_FRAMES))
        self.frames = 0  # frames generated with the bank on

    def bias(self, strength: float) -> list[float]:
        """Per slot: log(strength) once written, -inf before (and for strength 0)."""
        weight = math.log(strength) if strength > 0 else -math.inf
        return [weight if slot < self.written else -math.inf for slot in range(BANK_FRAMES)]

    def write(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """This stream's row of every layer's (N, C) keys and values, into the ring every ``BANK_INTERVAL`` frames."""
        if self.frames % BANK_INTERVAL == 0:
            slot = self.written % BANK_FRAMES
            if self.keys is None:
                self.keys = [torch.zeros((BANK_FRAMES, *k.shape), dtype=k.dtype, device=k.device) for k, _ in kv]
                self.values = [torch.zeros_like(keys) for keys in self.keys]
            for layer, (key, value) in enumerate(kv):
                self.keys[layer][slot].copy_(key)
                self.values[layer][slot].copy_(value)
            self.written += 1
        self.frames += 1

    def clear(self) -> None:
        self.keys = self.values = None
        self.written = self.frames = 0

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (*(self.keys or ()), *(self.values or ())))


def bytes_per_stream(layers: list[tuple[int, int]], latent_side: int, dtype: torch.dtype) -> int:
    """What one stream's full bank holds: keys and values of ``BANK_FRAMES`` frames in every self-attention layer."""
    size = torch.empty((), dtype=dtype).element_size()
    return sum(2 * BANK_FRAMES * (latent_side // f) ** 2 * c * size for f, c in layers)


def gather(banks: list[FeatureBank | None], strengths: list[float], layers: list[tuple[int, int]],
           latent_side: int, rows: int, dtype: torch.dtype, device: torch.device,
           upload: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
    """The ``bank`` kwarg for a batch: per layer (rows, F*N, C) keys and values (zeros where a row has none), the
    (rows, F) bias, and the empty ``out`` dict the layers fill.  Rows past ``len(banks)`` repeat the last (bucket
    padding).  ``upload``: the bias to the device without making the host wait (default: ``.to(device)``)."""
    bias = [bank.bias(s) if bank is not None else [-math.inf] * BANK_FRAMES for bank, s in zip(banks, strengths)]
    bias += [bias[-1]] * (rows - len(bias))
    padded = [*banks, *[banks[-1]] * (rows - len(banks))]
    keys, values = [], []
    for layer, (factor, channels) in enumerate(layers):
        tokens = (latent_side // factor) ** 2
        empty = torch.zeros((BANK_FRAMES, tokens, channels), dtype=dtype, device=device)
        keys.append(torch.stack([b.keys[layer] if b is not None and b.keys else empty for b in padded]).view(
            rows, BANK_FRAMES * tokens, channels))
        values.append(torch.stack([b.values[layer] if b is not None and b.values else empty for b in padded]).view(
            rows, BANK_FRAMES * tokens, channels))
    bias = torch.tensor(bias, dtype=torch.float32)
    return {"keys": keys, "values": values, "bias": upload(bias) if upload else bias.to(device), "out": {}}

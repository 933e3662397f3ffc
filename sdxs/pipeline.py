"""The batched one-step image-conditioned SDXS pipeline.

One call takes a list of requests (prompt, seed, mode, strength, control scale, style and an input image), groups
the ones that can share a forward (``batch_key``), and runs each group in two phases:

* ``stage``: input frames squared once (``sdxs.frames``), control images (``sdxs.control``), noise, timesteps and
  control scales, all as tensors on the device;
* ``run``: 1. prompt embeddings (cached), 2. latents, 3. ControlNet, 4. one UNet forward, 5. the one-step update,
  6. decode, padded up to a batch-size bucket (``sdxs.buckets``) when buckets are set (CUDA graphs).

Images come back in request order as PIL RGB or uint8 (H, W, 3) arrays of ``size`` x ``size``.  The server calls the
phases itself, on two threads, to overlap them (server/worker.py).

Guidance is 0 and there is one step: negative prompts and guidance scales do not apply to SDXS.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Hashable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdxs import bank, control, frames
from sdxs.buckets import bucket, pad_rows
from sdxs.caches import LRUCache
from sdxs.controlnet import control_residuals
from sdxs.device import resolve_device, resolve_dtype
from sdxs.errors import InvalidRequest, WeightsUnavailable
from sdxs.graphs import Activity, GraphActivity
from sdxs.loading import AUTO, DEFAULT_MODEL, DEFAULT_SKETCH_CONTROLNET, MINI, model_notes, resolve_folder
from sdxs.onestep import add_noise
from sdxs.params import GenerationParams, GenerationRequest, Mode
from sdxs.schedule import OneStepSchedule
from sdxs.temporal import LiveBatch, TemporalState
from sdxs.tiny import MARKER

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostFrames:
    """Generated frames on the host: ``pixels`` uint8 (B, S, S, 3) RGB, readable once ``ready`` (a CUDA event; None
    on the CPU) has passed.  What ``to_host`` hands back across the server's seam (server/engine.py)."""

    pixels: torch.Tensor
    ready: Any = None

    @property
    def pending(self) -> bool:
        """The copy may still be running: waiting for it blocks (the server waits on a thread of its own)."""
        return self.ready is not None

    def arrays(self) -> list[np.ndarray]:
        """Wait for the copy, then the rows as uint8 (S, S, 3) arrays (views of one buffer)."""
        if self.ready is not None:
            self.ready.synchronize()
        return list(self.pixels.numpy())


@dataclass
class StagedBatch:
    """One batch between ``stage`` and ``run``: per-request values as tensors (on the device unless noted)."""

    params: list[GenerationParams]
    timesteps_cpu: torch.Tensor | None = None  # (B,) int64 on the CPU: the schedule's index per row
    timesteps: torch.Tensor | None = None  # the same on the device
    alphas: torch.Tensor | None = None  # (B,) float64: alphas_cumprod at each row's timestep
    noise: torch.Tensor | None = None  # (B, C, S/f, S/f), model dtype
    image_rows: list[int] = field(default_factory=list)  # rows in image mode (their frames are tiny-encoded)
    image_index: torch.Tensor | None = None  # image_rows as a tensor on the device
    pixels: torch.Tensor | None = None  # (len(image_rows), 3, S, S) in [-1, 1], the encoder's dtype
    control: torch.Tensor | None = None  # (B, 3, S, S) in [0, 1], model dtype: white on black
    control_scale: torch.Tensor | None = None  # (B,), model dtype
    states: list[TemporalState | None] | None = None  # the rows' stream histories (sdxs.temporal), if any has one
    ready: Any = None  # CUDA event: the staging stream's work is done
    timings: dict[str, float] = field(default_factory=dict)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.timesteps, self.alphas, self.noise, self.image_index, self.pixels, self.control,
                            self.control_scale) if t is not None]


class SDXSPipeline:
    """One-step SDXS inference over batches of requests.  Build it with ``from_pretrained``."""

    def __init__(self, *, tokenizer, text_encoder, unet, vae, scheduler, controlnet=None, decoder=None,
                 adapters: Sequence[str] = (), device: torch.device, dtype: torch.dtype, is_random: bool = False,
                 source: str = "", size: int | None = None, notes: dict | None = None):
        self.tokenizer, self.text_encoder, self.unet, self.controlnet = tokenizer, text_encoder, unet, controlnet
        self.encoder_vae = vae  # tiny autoencoder: encodes image-mode inputs
        self.decoder_vae = decoder or vae  # tiny by default; the full AutoencoderKL when asked for
        self.schedule = OneStepSchedule.from_scheduler(scheduler)
        self.device, self.dtype = device, dtype
        self.adapters = tuple(adapters)
        self.is_random, self.source = is_random, source
        self.notes = dict(notes or {})  # the folder's sdxs_model.json: what the page says about the model
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)  # pixels per latent (8 released)
        native = int(unet.config.sample_size) * self.vae_scale_factor
        if size is not None and (size < 64 or size % 64):
            raise ValueError(f"size must be a multiple of 64 (at least 64), got {size}")
        # (a 4x toy VAE, as in training/mini, makes smaller native sizes; explicit sizes stay multiples of 64)
        self.size = size or native
        self.memory_format = torch.contiguous_format
        self.last_timings: dict[str, float] = {}
        self.profile = False  # True: synchronise CUDA around each stage so last_timings are exact (benchmarks)
        self.buckets: tuple[int, ...] | None = None  # batch sizes padded up to (CUDA graphs: one capture each)
        self.graphs = False  # compiled with CUDA graphs (torch.compile mode "reduce-overhead")
        self._compiled = False  # torch.compile'd modules (with or without graphs)
        self._stream = None  # the CUDA staging stream, made on first use
        self._prompts = LRUCache(256)
        self._noise = LRUCache(64)
        self.bank_layers = bank.install(unet)  # self-attention layers' (factor, channels): sdxs.bank

    # ---- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, *, controlnet: str | None = "auto",
                        adapters: dict[str, str] | None = None, device: str = "auto", dtype: str = "auto",
                        decoder: str = "tiny", decoder_fp32: bool = False, channels_last: bool | str = "auto",
                        compile: bool | str = False, attention: str = "auto", size: int | None = None) -> SDXSPipeline:
        """Load a Hub id, a local diffusers folder, ``"mini"`` (the shipped miniature), ``"tiny"`` (random weights)
        or ``"auto"`` (the released default model; ``"mini"`` when the Hub cannot be reached).

        ``controlnet``: ``"auto"`` (the sketch ControlNet for the default model, ``DIR/controlnet`` for a local
        folder that has one), ``None``, a Hub id or a folder.  ``adapters``: style name -> PEFT LoRA (Hub id or
        folder).  ``decoder``: ``"tiny"`` or ``"large"`` (``vae_large/``).  ``decoder_fp32`` keeps the decoder in
        float32 (the model card's advice for fp16).  ``attention``: ``auto`` (xformers on CUDA when installed, else
        PyTorch SDPA), ``sdpa`` or ``xformers``.  ``channels_last``: ``auto`` turns it on for bf16 on the CPU,
        where oneDNN's NHWC convolutions were measured faster (and slower in fp32; ``bench/pipeline.py``).
        ``compile``: ``True`` or a ``torch.compile`` mode for the UNet, ControlNet and the tiny VAE; on CUDA at batch 1
        the eager UNet is kernel-launch bound and ``"reduce-overhead"`` (CUDA graphs, one capture per batch size)
        measured 5x faster (``bench/variants.py``): set ``pipe.buckets`` and warm up every bucket.
        ``size``: square output size in pixels (a multiple of 64; the model's native size by default).
        """
        from sdxs import components

        options = dict(controlnet=controlnet, adapters=adapters, device=device, dtype=dtype, decoder=decoder,
                       decoder_fp32=decoder_fp32, channels_last=channels_last, compile=compile, attention=attention,
                       size=size)
        if model == AUTO:
            try:
                return cls.from_pretrained(DEFAULT_MODEL, **options)
            except WeightsUnavailable as exc:
                log.warning("%s\nLoading the bundled miniature model instead (model \"mini\").", exc)
                return cls.from_pretrained(MINI, **{**options, "adapters": None})
        try:
            folder = resolve_folder(model)
            cn_folder = _controlnet_folder(model, folder, controlnet)
            adapter_folders = {name: resolve_folder(ref) for name, ref in (adapters or {}).items()}
        except WeightsUnavailable as exc:  # name every repo this setup needs, not only the first that failed
            raise exc.needing(_hub_repos(model, controlnet, adapters)) from None
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        parts = components.load_folder(folder, dt, decoder=decoder)
        if cn_folder is not None:
            parts["controlnet"] = components.load_controlnet(cn_folder, dt)
        for name, adapter_folder in adapter_folders.items():
            components.load_lora(parts["unet"], adapter_folder, name)
        pipe = cls(**parts, adapters=tuple(adapters or ()), device=dev, dtype=dt,
                   is_random=(folder / MARKER).exists(), source=model, size=size, notes=model_notes(folder))
        if channels_last == "auto":  # measured (bench/README.md): faster for bf16 on CPU, slower for fp32 there
            channels_last = dev.type == "cpu" and dt == torch.bfloat16
        pipe._place(decoder_fp32=decoder_fp32, channels_last=channels_last, compile=compile, attention=attention)
        return pipe

    def _place(self, *, decoder_fp32: bool, channels_last: bool, compile: bool | str, attention: str) -> None:
        from sdxs import components

        nets = [self.text_encoder, self.unet, self.encoder_vae, self.decoder_vae, self.controlnet]
        for net in filter(None, nets):
            net.to(self.device).eval().requires_grad_(False)
        self.decoder_dtype = torch.float32 if decoder_fp32 else self.dtype
        if self.decoder_dtype != self.dtype:
            self.decoder_vae.to(dtype=self.decoder_dtype)
        components.set_attention(self, attention)
        self.bank_layers = bank.install(self.unet)  # again: xformers replaced every processor
        if channels_last:
            self.memory_format = torch.channels_last
            for net in filter(None, [self.unet, self.controlnet, self.encoder_vae, self.decoder_vae]):
                net.to(memory_format=torch.channels_last)
        if compile:
            mode = compile if isinstance(compile, str) else None
            self._compiled = True
            self.graphs = mode == "reduce-overhead" and self.device.type == "cuda"
            self.unet = torch.compile(self.unet, mode=mode)
            if self.controlnet is not None:
                self.controlnet = torch.compile(self.controlnet, mode=mode)
            self.encoder_vae.encoder = torch.compile(self.encoder_vae.encoder, mode=mode)
            self.decoder_vae.decoder = torch.compile(self.decoder_vae.decoder, mode=mode)

    # ---- public helpers ----------------------------------------------------------------------------------------

    @property
    def modes(self) -> tuple[Mode, ...]:
        return tuple(m for m in Mode if self.controlnet is not None or m in (Mode.text, Mode.image))

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "size": self.size, "device": str(self.device), "dtype": str(self.dtype),
                "modes": [m.value for m in self.modes], "styles": list(self.adapters), "random_weights": self.is_random}

    def batch_key(self, request: GenerationRequest) -> Hashable:
        """Requests with equal keys run in one UNet forward: one key per path through the models (text: UNet and
        decoder; image: tiny encoder too; sketch and edges: ControlNet too) and style.  Text and image requests do
        not mix: a mixed batch would run the encoder at another batch size than the UNet, a path of its own for
        CUDA graphs that no warm-up covers."""
        return (path_of(request.params), request.params.style)

    def check(self, request: GenerationRequest) -> None:
        """Raise ``InvalidRequest`` naming the field when the request cannot run on this pipeline."""
        p = request.params
        if p.mode not in self.modes:
            raise InvalidRequest("mode", f"{p.mode.value!r} needs a ControlNet; this server has modes "
                                         f"{[m.value for m in self.modes]}")
        if p.style is not None and p.style not in self.adapters:
            raise InvalidRequest("style", f"unknown style {p.style!r}; loaded: {list(self.adapters) or 'none'}")
        if p.uses_image and request.image is None:
            raise InvalidRequest("image", f"mode {p.mode.value!r} needs an input image")

    def square(self, images: Sequence[Any]) -> torch.Tensor:
        """Frames of any size (see ``sdxs.frames``) -> uint8 (B, 3, S, S) on the device, cropped and resized once."""
        return frames.square(images, self.size, self.device)

    def control_image(self, request: GenerationRequest) -> Image.Image:
        """The control image the ControlNet sees: sketch inverted, or Canny edges (white on black, size x size)."""
        p = request.params
        with self._staging_stream():  # decoded frames on CUDA are handed over to the staging stream (server/nvjpeg.py)
            unit = control.control_images(self.square([request.image]), [p.mode.value], p.edge_low, p.edge_high)
            return frames.to_pil((unit[0] * 255).round().to(torch.uint8))

    def warmup(self, batch_sizes: Sequence[int] = (1,), max_passes: int = 4) -> WarmupReport:
        """Run every path (text, image, ControlNet, each style) at every batch size, in passes, until a pass compiles
        and records nothing, so kernels are picked, modules compiled and CUDA graphs recorded before the first
        visitor (cudagraph trees record on a later call than the first: ``sdxs.graphs``).  With ``buckets``, pass
        them all: each is a graph of its own.  An uncompiled pipeline needs one pass.

        Raises ``GraphsNotSettled`` (with the report) when the last of ``max_passes`` still compiled or recorded:
        live traffic would pay for captures; ``use_eager`` is the safe way on."""
        compiled = self.compiled
        report = WarmupReport()
        start = time.perf_counter()
        for _ in range(max_passes if compiled else 1):
            with GraphActivity() as activity:
                for requests in self.warmup_batches(batch_sizes):
                    self(requests)
            report.passes.append(activity.result)
            if activity.result.quiet:
                break
        report.seconds = time.perf_counter() - start
        if compiled and not report.passes[-1].quiet:
            raise GraphsNotSettled(report)
        return report

    def warmup_batches(self, batch_sizes: Sequence[int]) -> list[list[GenerationRequest]]:
        """One batch per path (``batch_key``), batch size and UNet variant: text, image, sketch (edges runs the same
        modules) for every style, with a still grey frame, each once plainly and once with the attention bank (its
        keys and values are inputs of their own: a graph per bucket; feedback and smooth changes are no module's)."""
        still = np.full((self.size, self.size, 3), 200, np.uint8)
        modes = [m for m in (Mode.text, Mode.image, Mode.sketch) if m in self.modes]
        batches = []
        for style in (None, *self.adapters):
            for mode in modes:
                image = None if mode is Mode.text else still
                plain = GenerationParams(mode=mode, style=style)
                banked = plain.model_copy(update={"bank": 1.0, "feedback": 0.5})
                for n in batch_sizes:
                    batches.append([GenerationRequest(plain, image)] * n)
                    batches.append([GenerationRequest(banked, image, TemporalState()) for _ in range(n)])
        return batches

    def thumbnails(self, images: Sequence[Any], side: int) -> torch.Tensor:
        """Frames (as ``square`` takes them) -> float32 (B, side, side) grey levels 0-255 on the CPU: the skip
        filter's small copies, squared and reduced on the device (on the staging stream, which the copy to the host
        waits for: never on the models' stream), then 4 bytes a pixel to the host."""
        with self._staging_stream():
            small = frames.square(images, side, self.device).float()
            return (small[:, 0] * 0.299 + small[:, 1] * 0.587 + small[:, 2] * 0.114).cpu()

    @property
    def compiled(self) -> bool:
        """Its modules are ``torch.compile``'d (with CUDA graphs or not): warm-ups take passes, and can fail."""
        return self.graphs or self._compiled

    def use_eager(self) -> None:
        """Step aside from ``torch.compile`` (and CUDA graphs) for the plain modules: the safe path when a warm-up or
        capture failed.  Batches are no longer padded to buckets."""
        def plain(module: Any) -> Any:
            return getattr(module, "_orig_mod", module)

        self.unet, self.controlnet = plain(self.unet), plain(self.controlnet)
        self.encoder_vae.encoder = plain(self.encoder_vae.encoder)
        self.decoder_vae.decoder = plain(self.decoder_vae.decoder)
        self.graphs, self._compiled, self.buckets = False, False, None

    # ---- the call ----------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(self, requests: Sequence[GenerationRequest], output_type: str = "pil") -> list:
        """Generate one image per request, in order.  ``output_type``: ``pil`` or ``np`` (uint8 (S, S, 3))."""
        if output_type not in ("pil", "np"):
            raise InvalidRequest("output_type", "must be 'pil' or 'np'")
        for request in requests:
            self.check(request)
        self.last_timings = defaultdict(float)
        groups: dict[Hashable, list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            groups[self.batch_key(request)].append(i)
        results: list[Any] = [None] * len(requests)
        for indices in groups.values():
            staged = self.stage([requests[i] for i in indices], checked=True)
            for name, ms in staged.timings.items():
                self.last_timings[name] += ms
            host = self.to_host(self.run(staged))
            with self._timed("postprocess"):
                for i, array in zip(indices, host.arrays()):
                    results[i] = Image.fromarray(array) if output_type == "pil" else array
        self.last_timings = dict(self.last_timings)
        return results

    @torch.inference_mode()
    def stage(self, requests: Sequence[GenerationRequest], *, checked: bool = False) -> StagedBatch:
        """Everything before the models, for requests sharing one batch key: frames squared once, image-mode pixels,
        control images, noise, timesteps and control scales as tensors on the device.  On CUDA it runs on a side
        stream (the server stages batch n+1 on its own thread while the models run batch n); ``run`` waits for it.
        ``checked``: every request passed ``check`` already (the server checks each frame once), so not again."""
        params = [r.params for r in requests]
        if len({self.batch_key(r) for r in requests}) != 1:
            raise ValueError("stage() takes requests of one batch key; __call__ groups them")
        if not checked:
            for request in requests:
                self.check(request)
        staged = StagedBatch(params)
        states = [r.temporal for r in requests]
        if any(states):
            if len({id(s) for s in states if s is not None}) < sum(s is not None for s in states):
                raise ValueError("a batch holds one frame per stream: two requests share a TemporalState")
            staged.states = states
        with self._staging_stream() as stream:
            with self._timed("preprocess", staged.timings):
                self._stage_frames(requests, staged)
            # per-request values as tensors: strength -> timestep and alpha, seed -> noise, control scale
            timesteps = torch.tensor([self.schedule.timestep(p.strength if p.mode is Mode.image else None)
                                      for p in params])
            staged.timesteps_cpu, staged.timesteps = timesteps, self._upload(timesteps)
            staged.alphas = self._upload(self.schedule.alphas(timesteps))
            staged.noise = torch.cat([self.noise(p.seed) for p in params])
            if staged.image_rows:
                staged.image_index = self._upload(torch.tensor(staged.image_rows))
            if params[0].uses_controlnet:
                staged.control_scale = self._upload(torch.tensor([p.control_scale for p in params], dtype=self.dtype))
            if stream is not None:
                staged.ready = stream.record_event()
        return staged

    def _stage_frames(self, requests: Sequence[GenerationRequest], staged: StagedBatch) -> None:
        params = staged.params
        rows = [i for i, p in enumerate(params) if p.uses_image]
        if not rows:
            return
        square = self.square([requests[i].image for i in rows])  # (len(rows), 3, S, S) uint8
        staged.image_rows = [i for i in rows if params[i].mode is Mode.image]
        if staged.image_rows:
            picked = [j for j, i in enumerate(rows) if params[i].mode is Mode.image]
            image = square if len(picked) == len(rows) else square[picked]
            staged.pixels = frames.to_pixels(image, self.encoder_vae.dtype, self.memory_format)
        if params[0].uses_controlnet:  # every row of a ControlNet batch has a frame
            cond = control.control_images(square, [p.mode.value for p in params], [p.edge_low for p in params],
                                          [p.edge_high for p in params])
            staged.control = cond.to(self.dtype).contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def run(self, staged: StagedBatch) -> torch.Tensor:
        """The models on a staged batch, padded up to its bucket.  Returns uint8 (B, S, S, 3) on the device."""
        if staged.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(staged.ready)
            for t in staged.tensors():
                t.record_stream(torch.cuda.current_stream(self.device))
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        params, n = staged.params, len(staged.params)
        rows = bucket(n, self.buckets)
        # 0. the streams' histories (sdxs.temporal): None when no row uses one, and nothing below changes
        live = LiveBatch.gather(params, staged.states, self)
        # 1. prompt embeddings (cached; interpolated while a stream's prompt changes)
        with self._timed("prompt"):
            embeds = [self.encode_prompt(p.prompt) for p in params]
            embeds = pad_rows(torch.cat(live.prompts(embeds) if live else embeds), rows)
        # 2. latents: fixed noise per seed; image-mode inputs encoded (blended with their stream's last output) and
        #    noised to their strength's timestep
        timesteps = pad_rows(staged.timesteps, rows)
        latents = pad_rows(self._prepare_latents(staged, live), rows).contiguous(memory_format=self.memory_format)
        # 3. ControlNet residuals (sketch and edge modes), scaled per request
        extra = {}
        if params[0].uses_controlnet:
            extra = self._control_residuals(pad_rows(staged.control, rows), pad_rows(staged.control_scale, rows),
                                            latents, timesteps, embeds)
        # 4. one UNet forward (its self-attention over the streams' attention banks, if any row uses one)
        attention = live.attention(rows, latents.shape[-1]) if live else None
        with self._timed("unet"), self._style(params[0].style):
            model_output = self.unet(latents, timesteps, encoder_hidden_states=embeds, return_dict=False,
                                     cross_attention_kwargs=attention, **extra)[0]
        # 5. the one-step update (then the streams' output blends, and their histories written)
        with self._timed("step"):
            x0 = self.schedule.step(model_output, latents, pad_rows(staged.timesteps_cpu, rows),
                                    alphas=pad_rows(staged.alphas, rows))
            if live:
                x0 = live.finish(x0)
        # 6. decode to uint8 pixels
        return self.decode(x0)[:n]

    def _upload(self, tensor: torch.Tensor) -> torch.Tensor:
        """A small CPU tensor to the device without making the host wait (pinned first on CUDA)."""
        if self.device.type != "cuda":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def to_host(self, images: torch.Tensor) -> HostFrames:
        """Device uint8 (B, S, S, 3) -> one host buffer (pinned, copied without blocking on CUDA) with the event to
        wait for before reading it (none on the CPU)."""
        if images.device.type != "cuda":
            return HostFrames(images.contiguous())
        host = torch.empty(images.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(images, non_blocking=True)
        return HostFrames(host, torch.cuda.current_stream(images.device).record_event())

    # ---- phases ------------------------------------------------------------------------------------------------

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """(1, 77, D) text embeddings in the UNet's dtype, cached per prompt (as diffusers' ``encode_prompt``)."""
        def compute() -> torch.Tensor:
            ids = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            return self.text_encoder(ids.to(self.device))[0].to(self.dtype)

        return self._prompts.get(prompt, compute)

    def noise(self, seed: int) -> torch.Tensor:
        """(1, C, S/f, S/f) standard normal noise for ``seed`` (f: the VAE's factor), drawn on the CPU, cached."""
        side = self.size // self.vae_scale_factor
        shape = (1, self.unet.config.in_channels, side, side)

        def compute() -> torch.Tensor:
            generator = torch.Generator("cpu").manual_seed(seed)
            noise = torch.randn(shape, generator=generator, dtype=torch.float32)
            return noise.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)

        return self._noise.get((seed, shape), compute)

    def _prepare_latents(self, staged: StagedBatch, live: LiveBatch | None = None) -> torch.Tensor:
        noise, n = staged.noise, len(staged.image_rows)
        if live:
            noise = live.noise(noise)
        if not n:
            return noise
        with self._timed("encode"):
            pixels = pad_rows(staged.pixels, bucket(n, self.buckets))  # the encoder has its own buckets
            encoded = self.encoder_vae.encode(pixels).latents[:n] * self.encoder_vae.config.scaling_factor
            if live:
                encoded = live.feed_input(encoded, staged.image_rows)
            index = staged.image_index
            alphas = staged.alphas.index_select(0, index).float()
            noised = add_noise(encoded.float(), noise.index_select(0, index).float(), alphas).to(self.dtype)
            return noise.index_copy(0, index, noised)

    def _control_residuals(self, cond, scale, latents, timesteps, embeds) -> dict[str, Any]:
        with self._timed("control"):
            return control_residuals(self.controlnet, latents, timesteps, embeds, cond, scale.view(-1, 1, 1, 1))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (UNet scale) -> uint8 (B, S, S, 3) pixels, rounded as diffusers' ``numpy_to_pil``."""
        with self._timed("decode"):
            scaled = latents.to(self.decoder_dtype) / self.decoder_vae.config.scaling_factor
            pixels = self.decoder_vae.decode(scaled, return_dict=False)[0]
            # diffusers' (x / 2 + 0.5).clamp(0, 1) * 255, rounded, as x * 127.5 + 127.5: one new float32 tensor (the
            # decoder's output may be a CUDA graph's static buffer, never written), then arithmetic in place
            unit = pixels.float().mul(127.5).add_(127.5).clamp_(0, 255).round_()
            return frames.to_uint8_hwc(unit)

    # ---- plumbing ----------------------------------------------------------------------------------------------

    @contextmanager
    def _style(self, style: str | None):
        if self.adapters:
            if style is None:
                self.unet.disable_adapters()
            else:
                self.unet.enable_adapters()
                self.unet.set_adapter(style)
        yield

    @contextmanager
    def _timed(self, stage: str, into: dict[str, float] | None = None):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.profile and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            timings = self.last_timings if into is None else into
            timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - start) * 1000.0

    @property
    def staging_stream(self) -> Any:
        """On CUDA: the side stream of this pipeline's own on which ``stage`` and ``control_image`` run (so staging
        overlaps the models' work on the default stream), made on first use; None elsewhere.  Frames decoded on the
        GPU are handed over to this stream (server/nvjpeg.py)."""
        if self.device.type != "cuda":
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        return self._stream

    @contextmanager
    def _staging_stream(self):
        """``staging_stream`` as the current stream (yielded); on other devices nothing (None)."""
        stream = self.staging_stream
        if stream is None:
            yield None
            return
        with torch.cuda.stream(stream):
            yield stream


def path_of(params: GenerationParams) -> str:
    """Which modules a request runs through: ``text`` (UNet, decoder), ``image`` (tiny encoder too) or ``control``
    (ControlNet too: sketch and edges)."""
    if params.uses_controlnet:
        return "control"
    return "image" if params.mode is Mode.image else "text"


@dataclass
class WarmupReport:
    """What ``warmup`` did: one ``sdxs.graphs.Activity`` per pass (the last one quiet when settled), seconds."""

    passes: list[Activity] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 2), "passes": [p.as_dict() for p in self.passes]}


class GraphsNotSettled(RuntimeError):
    """The warm-up's last pass still compiled or recorded CUDA graphs."""

    def __init__(self, report: WarmupReport):
        super().__init__(f"the warm-up's pass {len(report.passes)} still compiled or recorded: "
                         f"{report.passes[-1].as_dict()}")
        self.report = report


def _hub_repos(model: str, controlnet: str | None, adapters: dict[str, str] | None) -> tuple[str, ...]:
    """The Hub ids among the model, its ControlNet and its adapters (what `hf download` must fetch)."""
    refs = [model, DEFAULT_SKETCH_CONTROLNET if controlnet == "auto" and model == DEFAULT_MODEL else controlnet,
            *(adapters or {}).values()]
    return tuple(r for r in refs if r and r.count("/") == 1 and not Path(r).expanduser().exists())


def _controlnet_folder(model: str, folder: Path, controlnet: str | None) -> Path | None:
    if controlnet is None or controlnet in ("", "none"):
        return None
    if controlnet != "auto":
        return resolve_folder(controlnet)
    if model == DEFAULT_MODEL:
        return resolve_folder(DEFAULT_SKETCH_CONTROLNET)
    local = folder / "controlnet"
    return local if (local / "config.json").exists() else None


__all__ = ["SDXSPipeline", "GenerationRequest", "GraphsNotSettled", "HostFrames", "StagedBatch", "WarmupReport",
           "path_of"]

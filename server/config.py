"""Server options: one pydantic model, filled from command-line flags, then environment variables, then defaults.

Every field `max_batch` is settable as `--max-batch 8` or `SDXS_MAX_BATCH=8`; `port` also reads `PORT` (the
Hugging Face Spaces convention), and `host` is 0.0.0.0 where `SPACE_ID` says the app runs on a Space.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.devices import check_devices

ENV_PREFIX = "SDXS_"


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Interface to listen on: this machine only by default; '0.0.0.0' "
                      "serves the LAN (on a Hugging Face Space, where $SPACE_ID is set, that is the default).")
    port: int = Field(7860, ge=0, le=65535, description="TCP port (also read from $PORT).")
    model: str = Field("auto", description="'auto' (IDKiro/sdxs-512-dreamshaper, or 'mini' when the Hub cannot be "
                       "reached), a Hub id, a local diffusers folder, 'mini' (the miniature model this project trained "
                       "and ships: 32x32 digits) or 'tiny' (random weights, for plumbing tests).")
    controlnet: str = Field("auto", description="ControlNet: 'auto' (the model's sketch ControlNet / DIR/controlnet "
                            "when present), 'none' (or empty), a hub id or a folder.")
    styles: str = Field("", description="Style adapters loaded at start, 'name=hub_id_or_folder' separated by commas "
                        "(e.g. 'anime=IDKiro/sdxs-512-dreamshaper-anime'); visitors choose one per request.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    devices: str = Field("", description="Serve on several devices, one pipeline and batching worker each: 'all' "
                         "(every GPU), or a list such as 'cuda:0,cuda:1' ('cpu,cpu': two CPU pipelines, for tests); "
                         "empty: --device alone.")
    device_max_failures: int = Field(3, ge=1, le=1000, description="Failed batches in a row that take a device out "
                                     "of rotation (with --devices); its sessions move to the other devices.")
    dtype: str = Field("auto", description="'auto', 'float32', 'float16', 'bfloat16'.")
    resolution: int | None = Field(None, ge=64, le=2048, multiple_of=64,
                                   description="Square resolution; default: the model's native size (512 released).")
    max_sessions: int = Field(8, ge=1, description="Sessions served at once; later ones wait in the queue.")
    max_queue: int = Field(16, ge=0, description="Sessions that may wait; beyond that: 'server full'.")
    max_sessions_per_client: int = Field(4, ge=1, description="WebSockets per client address, counted from accept "
                                         "(also before `hello`) to close.")
    session_time_limit_s: float = Field(600.0, ge=0, description="Active time per session; 0 = unlimited.")
    idle_timeout_s: float = Field(60.0, ge=0, description="Close an active session silent this long; 0 = never.")
    handshake_timeout_s: float = Field(10.0, gt=0, description="Time to send `hello` after connecting.")
    time_left_every_s: float = Field(10.0, gt=0, description="Period of `time_left` messages.")
    max_batch: int = Field(8, ge=1, le=255, description="Most requests in one pipeline call.")
    batch_wait_ms: float = Field(0.0, ge=0, le=1000, description="Before a batch, wait up to this long until every "
                                 "active session has a frame (helps batching when inference is slow).")
    max_in_flight: int = Field(2, ge=1, le=16, description="Frames a client may have unanswered.")
    max_message_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="Largest accepted WebSocket message.")
    min_image_side: int = Field(16, ge=1, description="Smallest accepted input side in pixels.")
    max_image_side: int = Field(4096, ge=16, description="Largest accepted input side in pixels.")
    max_image_pixels: int = Field(4096 * 4096, ge=256, description="Largest accepted input area (bomb guard).")
    max_violations: int = Field(10, ge=1, description="Protocol violations tolerated per session; the next one "
                                "closes it with 1008.")
    output_format: Literal["jpeg", "webp", "png"] = Field("jpeg", description="Default output image format.")
    output_quality: int = Field(80, ge=1, le=100, description="JPEG/WebP quality.")
    codec_threads: int = Field(2, ge=1, le=64, description="Threads encoding output images (inputs are decoded in "
                               "batches by the worker's staging thread).")
    cuda_graphs: Literal["auto", "on", "off"] = Field("auto", description="CUDA graphs (torch.compile "
                                                      "'reduce-overhead') with batch-size buckets up to --max-batch, "
                                                      "all captured during warm-up; 'auto': on for a CUDA device.")
    torch_threads: int = Field(0, ge=0, le=256, description="PyTorch CPU threads; 0 = auto: for CPU inference one "
                               "per core but one (left to codecs and the event loop), else PyTorch's default.")
    safety_checker: str | None = Field(None, description="Safety checker folder or hub id; off by default.")
    forwarded_allow_ips: str | None = Field(None, description="Proxies trusted for X-Forwarded-For (uvicorn).")
    root_path: str = Field("", description="ASGI root_path when served under a path prefix by a proxy.")
    log_level: str = Field("info", description="uvicorn log level.")
    gradio: bool = Field(True, description="Mount server/gradio_ui.py at /gradio when it exists.")
    load_retries: int = Field(2, ge=0, le=100, description="Retries of a model download that failed (network), "
                              "10 s apart, before the server exits with status 1.")

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, value: str) -> str:
        return check_devices(value)

    def style_adapters(self) -> dict[str, str]:
        """``styles`` as name -> Hub id or folder; a malformed entry is a ValueError naming it."""
        adapters = {}
        for entry in filter(None, (part.strip() for part in self.styles.split(","))):
            name, sep, ref = entry.partition("=")
            if not sep or not name.strip() or not ref.strip():
                raise ValueError(f"--styles: expected name=hub_id_or_folder, got {entry!r}")
            adapters[name.strip()] = ref.strip()
        return adapters

    def limits(self, size: int) -> dict:
        """The `limits` object of the `welcome` message (docs/protocol.md section 2)."""
        return {
            "max_in_flight": self.max_in_flight, "max_message_bytes": self.max_message_bytes,
            "min_image_side": self.min_image_side, "max_image_side": self.max_image_side,
            "max_image_pixels": self.max_image_pixels, "session_time_limit_s": self.session_time_limit_s,
            "idle_timeout_s": self.idle_timeout_s, "time_left_every_s": self.time_left_every_s,
            "handshake_timeout_s": self.handshake_timeout_s, "max_violations": self.max_violations,
            "max_sessions": self.max_sessions, "max_queue": self.max_queue,
            "max_sessions_per_client": self.max_sessions_per_client, "size": size,
        }


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Build a ServerConfig: flags win over `SDXS_*` environment variables, which win over the defaults."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(description="SDXS real-time server", argument_default=argparse.SUPPRESS)
    for name, field in ServerConfig.model_fields.items():
        default = field.default
        parser.add_argument(_flag(name), dest=name, help=f"{field.description} [env {ENV_PREFIX}{name.upper()}; "
                                                          f"default {default!r}]")
    values: dict[str, str | None] = {}
    if "PORT" in env:
        values["port"] = env["PORT"]
    if env.get("SPACE_ID"):  # a Hugging Face Space: its proxy reaches the app from outside the container
        values["host"] = "0.0.0.0"
    for name in ServerConfig.model_fields:
        if ENV_PREFIX + name.upper() in env:
            values[name] = env[ENV_PREFIX + name.upper()]
    values.update(vars(parser.parse_args(argv)))
    for key in ("safety_checker", "forwarded_allow_ips", "resolution"):
        if values.get(key) in ("", "none", "None"):
            values[key] = None
    controlnet = values.get("controlnet")
    if controlnet is not None and controlnet.strip().lower() in ("", "none"):  # an empty Space variable means none
        values["controlnet"] = "none"
    return ServerConfig.model_validate(values, strict=False)

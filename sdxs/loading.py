"""Finding model folders: a Hub id (downloaded with progress into the Hugging Face cache), a local folder, ``mini``
(the miniature model this project trained and ships in ``models/sdxs-mini``) or ``tiny`` (a random-weight development
model written once into the local cache).  ``auto`` is the released model, or ``mini`` when the Hub cannot be reached.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sdxs.errors import WeightsUnavailable

DEFAULT_MODEL = "IDKiro/sdxs-512-dreamshaper"
DEFAULT_SKETCH_CONTROLNET = "IDKiro/sdxs-512-dreamshaper-sketch"
DEFAULT_ANIME_LORA = "IDKiro/sdxs-512-dreamshaper-anime"
TINY = "tiny"
MINI = "mini"
AUTO = "auto"
MINI_DIR = Path(__file__).resolve().parents[1] / "models" / "sdxs-mini"  # shipped with the repository
# optional notes in a model folder: {"notice": str, "example_prompts": [str, ...], "sketch": {"pen_width": float,
# "prompt": str, "control_scale": float}, "display": {"upscale": "pixelated" | "smooth"}} (docs/protocol.md, sec. 1)
NOTES = "sdxs_model.json"
UPSCALES = ("pixelated", "smooth")


def sdxs_cache_dir() -> Path:
    return Path(os.environ.get("SDXS_CACHE", Path.home() / ".cache" / "sdxs"))


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def resolve_folder(model: str) -> Path:
    """A local folder holding ``model``: the folder itself, the tiny model (written on first use) or a Hub snapshot.

    Raises ``WeightsUnavailable`` (naming the repo, the cache and the alternatives) when a Hub id can be neither
    found in the cache nor downloaded.
    """
    if model == MINI:
        if not (MINI_DIR / "model_index.json").exists():
            raise ValueError(f"model 'mini': {MINI_DIR} is missing; the miniature model ships with the repository "
                             "checkout (models/sdxs-mini), not with a wheel")
        return MINI_DIR
    if model == TINY:
        from sdxs.tiny import write_tiny_model

        folder = sdxs_cache_dir() / "tiny-v1"
        if not (folder / "model_index.json").exists():
            _write_once(folder, write_tiny_model)
        return folder
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"model {model!r}: expected a diffusers folder, got a file")
        return path
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ValueError(f"model {model!r}: no such folder, and not a Hub id of the form owner/name")
    return _download(model)


def _write_once(folder: Path, write) -> None:
    """``write(tmp)`` into a fresh folder beside ``folder``, then renamed onto it: processes that start together (two
    servers, test workers) never read a half-written model; the first rename wins and the others' copies go."""
    import shutil
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process's copy is already in place (or a stale, incomplete folder: replace it)
            if not (folder / "model_index.json").exists():
                shutil.rmtree(folder, ignore_errors=True)
                tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.safetensors", "*.bin", "*.model"]
    try:
        # tqdm progress bars are huggingface_hub's default; nothing is fetched when the cache is complete
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as first:  # offline, DNS, HTTP or missing repo: try the cache alone, then explain
        try:
            return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        except Exception:
            cause = f"{type(first).__name__}: {str(first).splitlines()[0] if str(first) else ''}"[:200]
            raise WeightsUnavailable(repo_id, hf_cache_dir(), cause) from None


def model_notes(folder: Path) -> dict:
    """The folder's ``sdxs_model.json`` notes for the page (what the model is, prompts it knows, how to sketch for it
    and show its pictures), or ``{}``.  Raises ValueError, naming the field, for a ``sketch`` or ``display`` object
    the page could not use."""
    path = folder / NOTES
    notes = json.loads(path.read_text()) if path.exists() else {}
    check_page_notes(notes, path)
    return notes


def check_page_notes(notes: dict, path: Path | str = NOTES) -> None:
    """``sketch.pen_width``: the page's default pen, a fraction of the sketch canvas's side in (0, 0.5];
    ``sketch.prompt``: the prompt sketch mode starts with (one that lets the drawing decide); ``sketch.control_scale``:
    the control scale it starts with (the scale the model's ControlNet was trained at); ``display.upscale``: how
    the page enlarges the model's pictures (``pixelated``: each pixel a sharp square, for small pictures;
    ``smooth``)."""
    sketch, display = notes.get("sketch"), notes.get("display")
    if sketch is not None:
        width, prompt = sketch.get("pen_width"), sketch.get("prompt")
        if width is not None and not (isinstance(width, int | float) and 0 < width <= 0.5):
            raise ValueError(f"{path}: sketch.pen_width {width!r}: expected a fraction of the canvas side in (0, 0.5]")
        if prompt is not None and not (isinstance(prompt, str) and prompt.strip()):
            raise ValueError(f"{path}: sketch.prompt {prompt!r}: expected a non-empty string")
        scale = sketch.get("control_scale")
        if scale is not None and not (isinstance(scale, int | float) and 0 <= scale <= 1):
            raise ValueError(f"{path}: sketch.control_scale {scale!r}: expected a number in [0, 1]")
    if display is not None and display.get("upscale") not in (None, *UPSCALES):
        raise ValueError(f"{path}: display.upscale {display.get('upscale')!r}: expected one of {UPSCALES}")

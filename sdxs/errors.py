"""Errors the pipeline raises on purpose, each carrying what a user needs to fix the problem."""

from __future__ import annotations


class InvalidRequest(ValueError):
    """A request that cannot be run; ``field`` names the offending input (e.g. ``"prompt"`` or ``"image"``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class WeightsUnavailable(RuntimeError):
    """Model weights could not be found locally nor downloaded."""

    def __init__(self, repo: str, cache_dir: str, cause: str = ""):
        self.repo = repo
        self.cache_dir = cache_dir
        super().__init__(
            f"Could not load weights for '{repo}': they are not in the Hugging Face cache ({cache_dir}) and the Hub "
            f"could not be reached{f' ({cause})' if cause else ''}.\n"
            f"  - download them on a connected machine (`hf download {repo}`) and copy the cache, or\n"
            f"  - pass a local diffusers folder: --model /path/to/{repo.split('/')[-1]}, or\n"
            f"  - for development without weights, use a random-weight model: --model tiny."
        )

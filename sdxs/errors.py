"""Errors the pipeline raises on purpose, each carrying what a user needs to fix the problem."""

from __future__ import annotations


class InvalidRequest(ValueError):
    """A request that cannot be run; ``field`` names the offending input (e.g. ``"prompt"`` or ``"image"``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class WeightsUnavailable(RuntimeError):
    """Model weights could not be found locally nor downloaded.

    ``repo`` is the one that failed; ``needed`` lists every Hub repo the requested setup uses (the model, its sketch
    ControlNet, style adapters), so the hint downloads all of them at once.
    """

    def __init__(self, repo: str, cache_dir: str, cause: str = "", needed: tuple[str, ...] = ()):
        self.repo = repo
        self.cache_dir = cache_dir
        self.cause = cause
        self.needed = tuple(dict.fromkeys((*needed, repo)))  # in order, the failing repo included once
        downloads = " && ".join(f"hf download {r}" for r in self.needed)
        super().__init__(
            f"Could not load weights for '{repo}': they are not in the Hugging Face cache ({cache_dir}) and the Hub "
            f"could not be reached{f' ({cause})' if cause else ''}.\n"
            f"  - download them on a connected machine (`{downloads}`) and copy the cache, or\n"
            f"  - load a local diffusers folder instead (model=\"/path/to/{self.needed[0].split('/')[-1]}\"), or\n"
            f"  - without the Hub, load the miniature model this project trained and ships (32x32 digits): "
            f"model=\"mini\",\n    or random weights for plumbing tests: model=\"tiny\"."
        )

    def needing(self, needed: tuple[str, ...]) -> WeightsUnavailable:
        """The same error, with the hint naming every repo in ``needed``."""
        return WeightsUnavailable(self.repo, self.cache_dir, self.cause, needed)

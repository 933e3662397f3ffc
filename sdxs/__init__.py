"""SDXS: real-time one-step latent diffusion with image conditions (model building, loading, inference)."""

from sdxs.errors import InvalidRequest, WeightsUnavailable
from sdxs.params import GenerationParams, Mode

__all__ = ["SDXSPipeline", "GenerationRequest", "GenerationParams", "Mode", "InvalidRequest", "WeightsUnavailable"]


def __getattr__(name: str):
    # the pipeline pulls in torch and diffusers: import it only when asked for, so `import sdxs` stays cheap
    if name in ("SDXSPipeline", "GenerationRequest"):
        from sdxs import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'sdxs' has no attribute {name!r}")

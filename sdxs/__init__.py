"""SDXS: real-time one-step latent diffusion with image conditions (model building, loading, inference)."""

import logging

from sdxs.errors import InvalidRequest, WeightsUnavailable
from sdxs.params import GenerationParams, Mode

__all__ = ["SDXSPipeline", "GenerationRequest", "GenerationParams", "Mode", "InvalidRequest", "WeightsUnavailable"]



def _drop_empty_fp32_warning(record: logging.LogRecord) -> bool:
    # diffusers 0.42's ModelMixin.to() warns "should be kept in float32: []" on every dtype cast of a model that keeps
    # no module in float32 (its list defaults to [], and the check is `is not None`): noise, dropped by name only.
    return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_drop_empty_fp32_warning)


def __getattr__(name: str):
    # the pipeline pulls in torch and diffusers: import it only when asked for, so `import sdxs` stays cheap
    if name in ("SDXSPipeline", "GenerationRequest"):
        from sdxs import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'sdxs' has no attribute {name!r}")

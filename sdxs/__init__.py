"""SDXS: real-time one-step latent diffusion with image conditions (model building, loading, inference)."""

import logging
import re

from sdxs.errors import InvalidRequest, WeightsUnavailable
from sdxs.params import GenerationParams, GenerationRequest, Mode

__all__ = ["SDXSPipeline", "GenerationRequest", "GenerationParams", "Mode", "InvalidRequest", "WeightsUnavailable"]



def _drop_empty_fp32_warning(record: logging.LogRecord) -> bool:
    # diffusers 0.42's ModelMixin.to() warns "should be kept in float32: []" on every dtype cast of a model that keeps
    # no module in float32 (its list defaults to [], and the check is `is not None`): noise, dropped by name only.
    return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_drop_empty_fp32_warning)

# diffusers' AutoencoderTiny.__init__ itself registers `block_out_channels` (a copy of decoder_block_out_channels, for
# pipelines that read the VAE's scale factor), so save_pretrained writes that key, and from_pretrained then warns that
# it is unexpected: on every load of a tiny VAE that diffusers saved (models/sdxs-mini, --model tiny). Dropped only
# when it is the one unexpected key; any other still warns.
_TINY_VAE_OWN_KEY = re.compile(r"The config attributes \{'block_out_channels': \[[\d, ]*\]\} were passed to "
                               r"AutoencoderTiny, but are not expected and will be ignored\..*", re.S)


def _drop_tiny_vae_own_key_warning(record: logging.LogRecord) -> bool:
    return not _TINY_VAE_OWN_KEY.fullmatch(record.getMessage())


logging.getLogger("diffusers.configuration_utils").addFilter(_drop_tiny_vae_own_key_warning)


def __getattr__(name: str):
    # the pipeline pulls in torch and diffusers: import it only when asked for, so `import sdxs` stays cheap
    if name == "SDXSPipeline":
        from sdxs import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'sdxs' has no attribute {name!r}")

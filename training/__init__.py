"""The paper's training code (SDXS, arXiv 2403.16627, sections 3.1-3.2 and 4).

Stages (each ``python -m training.stages.X --config FILE --set key=value`` or ``accelerate launch -m ...``):
1. ``distill_unet``        block-removed student UNet: denoising + output KD + feature KD (Fig. 2b)
2. ``distill_decoder``     tiny image decoder: L1 after 8x downsampling + GAN (Fig. 2a)
3. ``distill_controlnet``  student ControlNet: output KD + feature KD on the up stages (Fig. 2c)
4. ``onestep``             feature-matching warm-up, then segmented Diff-Instruct (Fig. 3)
5. ``onestep_controlnet``  the same scheme for the student ControlNet, student UNet frozen (Fig. 3 right)
6. ``export``              the released folder layout (StableDiffusionPipeline + ``vae_large/`` + ``controlnet/``)

``training/mini`` runs all of them at toy scale on a CPU.  ``training`` imports ``sdxs``, never the reverse.
"""

"""Stage 5 (paper Fig. 3 right): one-step training of the student ControlNet with the stage-4 scheme.

The one-step student UNet is frozen and only its ControlNet trains; control images are extracted from the teacher's
own samples (so prompt, control and target are consistent); the frozen teacher ControlNet is attached to both the
offline (real) and the online (fake) score model.  Config: ``training.stages.onestep.OneStepConfig`` with
``teacher_controlnet`` (required), ``student`` (the stage-4 one-step UNet), ``student_controlnet`` (the stage-3
distilled ControlNet) and ``control_kind``.
"""

from __future__ import annotations

from training.runner import Runner
from training.stages.onestep import OneStepConfig
from training.stages.onestep import main as _onestep_main


def main(argv=None) -> Runner:
    return _onestep_main(argv, controlnet_mode=True, cfg_cls=OneStepConfig)


if __name__ == "__main__":
    main()

"""Fixtures for the training tests: an untrained toy teacher (UNet, VAE, CLIP text encoder, ControlNet) and a tiny
image-text folder of digits, both written once per session.  Slow tests (``@pytest.mark.slow``) run only with
``-m slow``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # an oversubscribed 2-core box runs 2 OpenMP threads ~10x slower


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the miniature reproduction (3 seeds, ~100 min); run with -m slow")


def pytest_collection_modifyitems(config, items):
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@dataclass
class Toy:
    root: Path
    teacher: Path
    teacher_controlnet: Path
    data: Path

    def data_cfg(self) -> dict:
        return {"kind": "folder", "path": str(self.data), "resolution": 32, "cache_dir": str(self.root / "cache")}


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Toy:
    from training.mini import data as mdata
    from training.mini.models import write_random_teacher

    root = tmp_path_factory.mktemp("toy")
    teacher, controlnet = write_random_teacher(root)
    digits = mdata.digits(32)
    folder = mdata.write_folder(
        root / "digits", digits.train[:24], [mdata.PROMPT.format(int(k)) for k in digits.train_labels[:24]]
    )
    return Toy(root, teacher, controlnet, folder)

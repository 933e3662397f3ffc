"""Output folders the miniature may wipe: only empty ones or its own earlier runs, never a user's other files."""

from __future__ import annotations

import shutil
from pathlib import Path

MARKER = ".sdxs-mini-folder"  # written into every folder the miniature creates, so a rerun may replace it


def fresh_folder(path: Path, what: str) -> Path:
    """Empty ``path`` for a new run and mark it as ours.  Raises ValueError for a non-empty folder (or a file) that
    no earlier miniature run made, so a mistyped ``--work ~`` deletes nothing."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{what} {path} is a file; give a folder")
        if any(path.iterdir()) and not (path / MARKER).exists():
            raise ValueError(
                f"{what} {path} is not empty and was not made by a previous miniature run; "
                "give a new or empty folder (nothing was deleted)"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text(f"made by training.mini ({what}); a rerun replaces this folder\n")
    return path

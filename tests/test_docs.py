"""The documentation is written for the people who use, run and change this project (issue 25, item 8: no internal
notes left in docs/): every document under docs/ and every folder's README is reachable from README.md by relative
links, and no relative link points at a file that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")  # [text](target#anchor)


def relative_links(doc: Path) -> list[tuple[str, Path]]:
    found = []
    for target in LINK.findall(doc.read_text()):
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            found.append((target, (doc.parent / target).resolve()))
    return found


def test_every_document_is_reachable_from_the_readme_and_every_link_resolves():
    reached, todo, broken = set(), [ROOT / "README.md"], []
    while todo:
        doc = todo.pop()
        if doc in reached:
            continue
        reached.add(doc)
        for target, path in relative_links(doc):
            if not path.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
            elif path.suffix == ".md":
                todo.append(path)
    assert broken == []
    wanted = {*(ROOT / "docs").glob("*.md"), *(ROOT / name / "README.md" for name in ("frontend", "bench", "training"))}
    assert sorted(str(p.relative_to(ROOT)) for p in wanted - reached) == []

"""Say what `pip install ARGS` is about to fetch and how big it is, before it runs (used by scripts/install.sh).

Asks pip for a dry-run report, then sizes each wheel: local files from the disk, remote ones from a HEAD request.
Never fails the install: when pip or the network cannot answer, it says so and returns 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request

MB = 1024 * 1024


def planned(args: list[str]) -> list[dict]:
    """pip's installation report for ``args`` (the packages it would install, with their URLs)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", report, *args],
                       check=True, stdout=subprocess.DEVNULL)
        with open(report) as f:
            return json.load(f).get("install", [])


def size_of(url: str) -> int | None:
    """Bytes behind ``url``: a local file's size, or the Content-Length of a remote one (None when unknown)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
        return os.path.getsize(path) if os.path.isfile(path) else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as response:
            length = response.headers.get("Content-Length")
            return int(length) if length else None
    except OSError:
        return None


def main(args: list[str]) -> int:
    try:
        items = planned(args)
    except (subprocess.CalledProcessError, OSError, ValueError) as exc:
        print(f"  (could not list the downloads in advance: {exc})")
        return 0
    remote, local = [], []
    for item in items:
        url = item.get("download_info", {}).get("url", "")
        if "dir_info" in item.get("download_info", {}):
            continue  # the project itself (editable)
        name = f"{item['metadata']['name']} {item['metadata']['version']}"
        (local if url.startswith("file:") else remote).append((name, size_of(url)))
    if not remote and not local:
        print("  nothing to install")
        return 0
    if local:
        print(f"  {len(local)} packages from this machine's disk ({sum(s or 0 for _, s in local) / MB:.0f} MB)")
    if remote:
        known = sum(s or 0 for _, s in remote)
        unknown = sum(s is None for _, s in remote)
        largest = sorted(remote, key=lambda r: -(r[1] or 0))[:5]
        listed = ", ".join(f"{n} ({s / MB:.0f} MB)" if s else n for n, s in largest)
        extra = f", {unknown} of unknown size" if unknown else ""
        print(f"  downloading {len(remote)} packages, {known / MB:.0f} MB{extra}; largest: {listed}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

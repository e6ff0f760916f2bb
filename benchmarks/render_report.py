"""Render a run's report.html in headless Chromium and save a full-page screenshot.

Proves the page renders in a real browser (images inlined, nothing fetched): Chromium runs with the
network-free flags this environment needs. Install it with `apt-get install chromium`.
Usage: python benchmarks/render_report.py RUN_DIR/report.html [--out screenshot.png] [--height 4000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def render(report: Path, screenshot: Path, width: int = 1200, height: int = 4000) -> Path:
    """Screenshot ``report`` with headless Chromium; returns the PNG path."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("no Chromium found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={screenshot.absolute()}",
                report.absolute().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    if not screenshot.is_file() or screenshot.stat().st_size == 0:
        raise SystemExit("Chromium wrote no screenshot")
    return screenshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report", type=Path)
    parser.add_argument("--out", type=Path, default=Path("report.png"))
    parser.add_argument("--height", type=int, default=4000)
    args = parser.parse_args()
    print(render(args.report, args.out, height=args.height))


if __name__ == "__main__":
    main()

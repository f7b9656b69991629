"""Make the review page's screenshot for the README from the bundled demo.

    python examples/make_review_screenshot.py [--work DIR] [--out docs/images/review-demo.png]

Colours the demo reel (``pipeline.run.run_reel``, FFV1, CPU, into ``DIR``, default a temporary
folder; an existing finished work folder is reused, shot by shot), which writes the review page
``DIR/work/review.html``, then renders its top with headless Chromium (the Debian package
``chromium``) at 1000x1300 px into ``--out``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.run import RunSettings, run_reel
from pipeline.workdir import REVIEW_NAME


def main() -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="folder for the output and the work folder (kept)")
    parser.add_argument("--out", type=Path, default=here.parent / "docs" / "images" / "review-demo.png")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium not found (apt-get install chromium)", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="review-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    demo = here / "demo"
    run_reel(
        demo / "reel.mov",
        demo / "refs",
        work / "demo.colorized.mkv",
        workdir=work / "work",
        settings=RunSettings(codec="ffv1", device="cpu"),
        force=True,
    )
    page = work / "work" / REVIEW_NAME
    args.out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={args.out.resolve()}",
            "--window-size=1000,1300",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    print(f"{args.out}: screenshot of {page}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

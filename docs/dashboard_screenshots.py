"""Screenshot the Ray dashboard's pages as a person sees them, logged in with the cluster's token.

How the README's "Reading the dashboard" section was checked. Needs a browser, which the project does not install:
``apt-get install chromium`` and ``pip install playwright`` (then no ``playwright install``: the system Chromium is
used). Run it while (or after) a job runs on the cluster:

    python docs/dashboard_screenshots.py --dashboard http://127.0.0.1:8265 --out /tmp/dashboard

It writes one PNG per page (overview, jobs, the newest job, cluster, actors, logs) and prints each path.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

PAGES = {"overview": "#/overview", "jobs": "#/jobs", "cluster": "#/cluster", "actors": "#/actors", "logs": "#/logs"}


def _token() -> str:
    return subprocess.run(["ray", "get-auth-token"], check=True, capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    """Log in, visit every page, save the screenshots; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dashboard", default="http://127.0.0.1:8265", help="dashboard URL")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="browser executable")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(args.dashboard, wait_until="networkidle")
        page.screenshot(path=str(args.out / "login.png"))
        page.get_by_placeholder("Enter your authentication token").fill(_token())
        page.get_by_role("button", name="Submit").click()
        page.wait_for_timeout(3000)
        for name, fragment in PAGES.items():
            page.goto(f"{args.dashboard}/{fragment}", wait_until="networkidle")
            page.wait_for_timeout(2500)
            page.screenshot(path=str(args.out / f"{name}.png"), full_page=True)
            print(args.out / f"{name}.png")
        page.goto(f"{args.dashboard}/#/jobs", wait_until="networkidle")
        page.wait_for_timeout(2000)
        links = page.locator("a[href*='#/jobs/']")
        if links.count():
            links.first.click()
            page.wait_for_timeout(4000)
            page.screenshot(path=str(args.out / "job.png"), full_page=True)
            print(args.out / "job.png")
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright) on the Argilla UI: sign in, open a
deep link, wait for the record, save a screenshot. Used by the UI test and ``scripts/demo_session.sh``::

    python -m tests.argilla_ui LINK OUT.png    # ARGILLA_API_URL, ARGILLA_USERNAME, ARGILLA_PASSWORD from env
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def missing() -> str | None:
    """Why the UI check cannot run here (``None`` when it can)."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt-get install chromium, or bash scripts/setup.sh)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


def screenshot(api_url: str, username: str, password: str, link: str, out: str | Path,
               timeout_ms: int = 60_000) -> str:
    """Sign in at ``api_url``, open ``link``, save a full-window PNG to ``out``; return the page's visible text.

    Raises:
        playwright.sync_api.Error: the page did not load, sign-in failed, or no record showed up in time.
    """
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                            args=FLAGS, viewport={"width": 1400, "height": 900})
            try:
                page = browser.new_page()
                page.set_default_timeout(timeout_ms)
                page.goto(api_url.rstrip("/") + "/sign-in", wait_until="networkidle")
                page.fill("input[name=Username]", username)
                page.fill("input[type=password]", password)
                page.click("button[type=submit]")
                page.wait_for_url(lambda url: "sign-in" not in url)
                page.goto(link, wait_until="networkidle")
                page.get_by_text("Which label fits this text?").wait_for()
                page.wait_for_timeout(1000)  # let the suggestion badge render
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out))
                return page.inner_text("body")
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m tests.argilla_ui LINK OUT.png", file=sys.stderr)
        return 2
    reason = missing()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    screenshot(os.environ["ARGILLA_API_URL"], os.environ["ARGILLA_USERNAME"], os.environ["ARGILLA_PASSWORD"],
               args[0], args[1])
    print(f"screenshot: {args[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

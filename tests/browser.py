"""Open a page in Debian's headless Chromium (`make chromium`) through Playwright, and say what it did.

Playwright drives /usr/bin/chromium by `executable_path`: no browser download. Tests that need it
skip, with the reason, when the browser or Playwright is missing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (`make chromium` installs Debian's package; it could not here)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        pytest.skip(f"playwright is not installed (the dev extra pins it): {e}")


def open_page(html: Path, screenshot: Path) -> dict[str, Any]:
    """Load `html` from disk, let its scripts run, and take a full-page screenshot. Returns every chart div
    with its count of plotly `.main-svg` elements, its traces as drawn ([name, sum of y]), console errors
    and uncaught exceptions, every URL the page requested, the page's visible text, and its
    `window.__pond_xss` (set only if injected markup ran)."""
    from playwright.sync_api import sync_playwright

    require_chromium()
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.resolve().as_uri(), wait_until="load")
            page.wait_for_function("() => document.querySelectorAll('.plotly-graph-div').length === 0 || "
                                   "Array.from(document.querySelectorAll('.plotly-graph-div'))"
                                   ".every(d => d.querySelector('.main-svg'))", timeout=30_000)
            charts = page.evaluate("() => Object.fromEntries(Array.from(document.querySelectorAll("
                                   "'.plotly-graph-div')).map(d => [d.id, d.querySelectorAll('.main-svg').length]))")
            # what plotly drew from: each trace's name and the sum of its y values
            traces = page.evaluate("() => Object.fromEntries(Array.from(document.querySelectorAll("
                                   "'.plotly-graph-div')).map(d => [d.id, (d.data || []).map(t => "
                                   "[t.name, Array.from(t.y || []).reduce((a, b) => a + b, 0)])]))")
            text = page.inner_text("body")
            xss = page.evaluate("() => window.__pond_xss === undefined ? null : window.__pond_xss")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"charts": charts, "traces": traces, "errors": errors, "requests": requests, "text": text, "xss": xss}


def screenshot_is_real(png: Path) -> tuple[int, int, int]:
    """(width, height, distinct colours) of a PNG; a blank or failed page has a handful of colours."""
    from PIL import Image

    with Image.open(png) as im:
        rgb = im.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        return rgb.width, rgb.height, len(colours) if colours else 1 << 20

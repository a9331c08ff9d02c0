"""Debian's chromium under Playwright: launch arguments and a fresh page."""

from __future__ import annotations

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def new_page(browser, **options):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, **options)
    return context.new_page()

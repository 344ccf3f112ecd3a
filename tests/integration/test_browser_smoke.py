"""Playwright drives Debian's Chromium (KEYLESS_TEST_CHROMIUM) headless, as the dashboard tests will, and it renders."""

from __future__ import annotations

import os
import urllib.parse

import pytest
from playwright.sync_api import sync_playwright

# As root (CI) Chromium needs --no-sandbox; the rest keeps it off the GPU and off the network except for the page.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_chromium_renders_a_page() -> None:
    executable = os.environ.get("KEYLESS_TEST_CHROMIUM")
    if not executable:
        pytest.skip("KEYLESS_TEST_CHROMIUM is not set (make unit sets it to /usr/bin/chromium)")
    html = "<!doctype html><title>keyless smoke</title><p id=greeting>hello</p>"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto("data:text/html," + urllib.parse.quote(html))
            assert page.title() == "keyless smoke"
            assert page.text_content("#greeting") == "hello"
        finally:
            browser.close()

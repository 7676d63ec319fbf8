"""Tests that need something the test environment may lack: a tool outside Python (headless
Chromium, Debian's WordNet) or a Python package of an extra that ``pip install -e ".[test]"``
installs (transformers, Ray).

A developer without it gets a clean skip with the install hint. CI installs everything and sets
``NEGSPACE_TEST_REQUIRE_TOOLS=1``, under which a missing tool or package fails the test instead: a
promise of the README is never skipped silently there.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
from types import ModuleType
from typing import Any

import pytest

REQUIRE_VARIABLE = "NEGSPACE_TEST_REQUIRE_TOOLS"


def tools_required() -> bool:
    return os.environ.get(REQUIRE_VARIABLE, "") not in ("", "0")


def missing_tool(message: str) -> None:
    """Skip the calling test (or module) with ``message``, or fail it where CI requires every tool."""
    if tools_required():
        pytest.fail(f"{message} ({REQUIRE_VARIABLE} is set, so this test may not be skipped)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require_module(name: str, extra: str) -> ModuleType:
    """Import ``name``, a package of negspace's ``extra``; skip only where it is not installed at all.

    Only a package that is absent skips (and only without ``NEGSPACE_TEST_REQUIRE_TOOLS``): a package
    that is installed but fails to import, or an API of it that a test cannot use, is an error to
    see, not a reason to skip.
    """
    if importlib.util.find_spec(name) is None:
        missing_tool(f"{name} is not installed (pip install -e '.[{extra}]', which '.[test]' includes)")
    return importlib.import_module(name)


def headless_chromium() -> Any:
    """A selenium driver of headless Chromium that keeps the page's console log (every browser
    test reads it); skipped (or failed, in CI) where selenium or Chromium is missing. The caller
    quits it."""
    try:
        from selenium import webdriver
    except ImportError:
        missing_tool("selenium is not installed (pip install -e '.[test]')")
    driver_path = shutil.which("chromedriver")
    if driver_path is None or (shutil.which("chromium") or shutil.which("chromium-browser")) is None:
        missing_tool("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))

"""Tests that need a tool outside Python (headless Chromium, Debian's WordNet).

A developer without the tool gets a clean skip with the install hint. CI installs every tool and
sets ``NEGSPACE_TEST_REQUIRE_TOOLS=1``, under which a missing tool fails the test instead: a
promise of the README is never skipped silently there.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_VARIABLE = "NEGSPACE_TEST_REQUIRE_TOOLS"


def tools_required() -> bool:
    return os.environ.get(REQUIRE_VARIABLE, "") not in ("", "0")


def missing_tool(message: str) -> None:
    """Skip the calling test with ``message``, or fail it where CI requires every tool."""
    if tools_required():
        pytest.fail(f"{message} ({REQUIRE_VARIABLE} is set, so this test may not be skipped)", pytrace=False)
    pytest.skip(message)

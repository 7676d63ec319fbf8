"""Credentials never reach a message or a results file.

A user may write a password into a URL (``openai:http://user:secret@host/v1/m``), or an API key
into its query string; every message and every recorded command line passes through
:func:`redact_credentials` first.
"""

from __future__ import annotations

import re

# user:password@ (or a bare token@) after '//' or right after a spec's 'kind:' prefix
_USERINFO = re.compile(r"((?://)|(?:^[A-Za-z][\w+.-]*:))[^/@\s]+@")
# ?key=..., &api_key=..., token=..., password=..., secret=... in a query string
_QUERY_SECRET = re.compile(
    r"([?&;](?:[\w.-]*(?:key|token|secret|password|passwd|auth)[\w.-]*)=)[^&;#\s]*", re.IGNORECASE
)


def redact_credentials(text: str) -> str:
    """``text`` with URL credentials and secret query values replaced by ``***``."""
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(r"\1***@", text))

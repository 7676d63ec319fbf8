"""Local stand-ins for a network service: a port nobody listens on, a socket that never answers,
and the Hugging Face hub pointed at either (what ``HF_ENDPOINT`` does), so a test of "the server is
down" runs the code's real connection attempts rather than a replaced probe."""

from __future__ import annotations

import socket

import pytest

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


def closed_port() -> int:
    """A port of 127.0.0.1 with nobody listening: bound, read and closed again."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SilentServer:
    """A socket of 127.0.0.1 that accepts connections into its backlog and never answers;
    :meth:`connections` counts those that arrived."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen = 0

    def connections(self) -> int:
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return self.seen
            conn.close()
            self.seen += 1

    def close(self) -> None:
        self.sock.close()


def point_hub_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, *, offline: bool) -> None:
    """The hub at ``endpoint`` (huggingface_hub reads ``HF_ENDPOINT`` once, at import: its constants
    are set as that import would have set them), with ``HF_HUB_OFFLINE`` as given and no proxy."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    for variable in PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)

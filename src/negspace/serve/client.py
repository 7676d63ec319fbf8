"""A small client of the ``negspace serve`` API (``pip install 'negspace[serve]'``)::

    from negspace import Client
    with Client("http://127.0.0.1:8080") as client:
        rows = client.score(["photo1.jpg", "photo2.png"])   # one dict per image, in order
        print(rows[0]["score"], rows[0]["ood"], rows[0]["id_class"])

Images go as multipart files, ``batch`` per request; a 503 (queue full) is retried after the
server's ``Retry-After``; any other refusal is a :class:`~negspace.errors.NegspaceError` quoting
the server's sentence.
"""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from negspace.errors import NegspaceError


class Client:
    """Speaks the API of ``negspace serve`` at ``url`` (with ``token``, the server's bearer token)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        token: str | None = None,
        *,
        timeout: float = 120.0,
        batch: int = 16,
        retries: int = 5,
    ) -> None:
        self.url = url.rstrip("/")
        self.batch, self.retries = batch, retries
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __repr__(self) -> str:
        return f"Client({self.url!r})"  # never the token

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- scoring ---------------------------------------------------------------------------------

    def score(self, paths: Sequence[str | Path], explain: int = 0) -> list[dict[str, Any]]:
        """One result per image file, in order: ``name`` (the path as given), ``sha256``,
        ``score``, ``ood``, ``threshold``, ``id_class``, ``id_cosine``, ``negative_label``,
        ``negative_cosine`` (and ANTS's ``explanation`` with ``explain=K``)."""
        results: list[dict[str, Any]] = []
        for start in range(0, len(paths), self.batch):
            files = []
            for path in paths[start : start + self.batch]:
                kind = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
                try:
                    data = Path(path).read_bytes()
                except OSError as err:
                    raise NegspaceError(f"{path} cannot be read ({err.strerror}).") from None
                files.append(("images", (str(path), data, kind)))
            results += self._post("/v1/score", files=files, params={"explain": explain})["results"]
        return results

    def score_bytes(
        self, data: bytes, name: str = "image", content_type: str = "application/octet-stream", explain: int = 0
    ) -> dict[str, Any]:
        """The result of one image given as bytes."""
        return self._post(
            "/v1/score", content=data, headers={"Content-Type": content_type}, params={"name": name, "explain": explain}
        )["results"][0]

    def score_features(
        self, features: Any, names: Sequence[str] | None = None, explain: int = 0
    ) -> list[dict[str, Any]]:
        """Results of feature vectors (rows of the model's dimension) computed elsewhere."""
        import numpy as np

        rows = np.asarray(features, dtype=np.float64)
        rows = rows[None, :] if rows.ndim == 1 else rows
        results: list[dict[str, Any]] = []
        for start in range(0, len(rows), self.batch):
            body: dict[str, Any] = {"features": rows[start : start + self.batch].tolist()}
            if names is not None:
                body["names"] = list(names[start : start + self.batch])
            results += self._post("/v1/score/features", json=body, params={"explain": explain})["results"]
        return results

    # -- the detector and its state ----------------------------------------------------------------

    def detector(self) -> dict[str, Any]:
        """The server's detector: method, parameters, model, threshold, adaptive state."""
        return self._request("GET", "/v1/detector")

    def ready(self) -> bool:
        """Whether the server is up and ready to score."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def snapshot(self) -> dict[str, Any]:
        """Snapshot the adaptive state now (the server needs --state-dir)."""
        return self._post("/v1/state/snapshot")

    def reset(self) -> dict[str, Any]:
        """Forget what the adaptive detector learned: back to the saved detector."""
        return self._post("/v1/state/reset")

    # -- transport -------------------------------------------------------------------------------

    def _post(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._request("POST", path, **kwargs)

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as err:
                raise NegspaceError(f"{self.url}{path}: the server cannot be reached ({type(err).__name__}).") from None
            if response.status_code == 503 and attempt < self.retries:
                time.sleep(min(30.0, float(response.headers.get("Retry-After", "1") or 1)))
                continue
            break
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                said = f"{error['kind']}: {error['message']}"
            except (ValueError, KeyError, TypeError):
                said = response.text[:200]
            raise NegspaceError(f"{self.url}{path}: HTTP {response.status_code} ({said})")
        return response.json()

"""The CLIP encoder front end shared by every backend: batching, normalisation and caching.

A backend (open_clip, transformers) only knows how to turn a batch of strings or a batch of PIL
images into raw embeddings. :class:`ClipEncoder` does the rest: it applies the prompt template,
splits work into batches with a progress bar, L2-normalises in float32, reads and writes the
per-item cache, and skips unreadable image files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from negspace.cache import FeatureStore, make_key
from negspace.encoders.results import ImageEncoding, SkippedFile, as_unit_float32, check_batch_size
from negspace.errors import NegspaceError, UnreadableImageError, arg

__all__ = ["SPEC_FORMS", "Backend", "ClipEncoder", "ImageEncoding", "SkippedFile", "resolve_device"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Threads that read and decode image files while the model works; PIL and file reads release
# the GIL, so decoding keeps pace with a GPU.
_IO_WORKERS = min(8, os.cpu_count() or 1)

#: The accepted model spec forms, quoted in error messages.
SPEC_FORMS = (
    "openclip:ARCH/PRETRAINED (e.g. openclip:ViT-B-16/openai), openclip:CONFIG.json/none with "
    f"{arg('weights')}, openclip:hf-hub:ORG/REPO, or hf:NAME_OR_PATH"
)


class Backend(Protocol):
    """What a model library must provide; outputs are raw (unnormalised) embeddings."""

    #: Identifies the image transform, so image features are cached per preprocessing.
    preprocess_id: str
    #: Embedding width.
    dim: int

    def encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        """Embed already-templated texts, returning a ``(B, D)`` tensor."""
        ...

    def token_counts(self, texts: list[str]) -> list[int]:
        """How many tokens each already-templated text takes (padding excluded): batches of
        equal counts carry no padding, which a backend that trims padding does not compute."""
        ...

    def encode_image_batch(self, images: list[Image.Image]) -> torch.Tensor:
        """Preprocess and embed RGB images, returning a ``(B, D)`` tensor."""
        ...

    def pixel_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """One RGB image to its model input ``(3, H, W)``, as a callable that pickles without the
        model (it runs in loader worker processes and Ray tasks)."""
        ...

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed a ``(B, 3, H, W)`` batch of transformed images, returning ``(B, D)``."""
        ...


def default_workers() -> int:
    """Decoding workers: the cores this process may use, at most 8."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return max(1, min(8, usable))


class _ImageFiles(torch.utils.data.Dataset):
    """Decode and transform image files in loader workers: ``(index, tensor or None, reason)``."""

    def __init__(self, files: list[Path], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.files = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, j: int) -> tuple[int, torch.Tensor | None, str]:
        from negspace.data import load_rgb  # imported here: data depends on nothing of ours

        try:
            return j, self.transform(load_rgb(self.files[j])), ""
        except UnreadableImageError as exc:
            return j, None, exc.reason


def _collate(
    items: list[tuple[int, torch.Tensor | None, str]],
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """A batch: the indices of the decoded images, their stacked tensors, the failures."""
    ok = [(j, t) for j, t, _ in items if t is not None]
    failed = [(j, reason) for j, t, reason in items if t is None]
    return [j for j, _ in ok], (torch.stack([t for _, t in ok]) if ok else None), failed


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` into a usable device.

    ``"auto"`` picks CUDA when available, else the CPU. Asking for a device this machine lacks is
    a :class:`NegspaceError` rather than a later, obscure torch error.
    """
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise NegspaceError(f"Unknown device {device!r}; use auto, cpu, cuda or cuda:N.") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise NegspaceError(
                f"Device {device!r} was asked for but this machine has no usable CUDA GPU "
                f"(or torch was built without CUDA); use {arg('device')} cpu or {arg('device')} auto."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise NegspaceError(
                f"Device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)."
            )
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise NegspaceError(f"Device {device!r} is not available on this machine.")
    elif dev.type != "cpu":
        raise NegspaceError(f"Unsupported device {device!r}; use auto, cpu, cuda or cuda:N.")
    return dev


def _batches(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def unit_features(features: torch.Tensor) -> np.ndarray:
    """Rows to unit L2 norm, computed in float32 (fp16 features would lose precision)."""
    feats = features.detach().float()
    feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return feats.cpu().numpy().astype(np.float32, copy=False)


def _check_template(template: str) -> None:
    """A prompt template needs exactly one ``{}`` slot for the text."""
    try:
        a, b = template.format("\x00a"), template.format("\x00b")
    except (IndexError, KeyError, ValueError) as exc:
        raise NegspaceError(
            f"Prompt template {template!r} is not valid; it must contain one {{}} where the "
            "text goes, e.g. 'a photo of a {}.'."
        ) from exc
    if a == b:
        raise NegspaceError(f"Prompt template {template!r} has no {{}} slot for the text, e.g. 'a photo of a {{}}.'.")


class ClipEncoder:
    """A CLIP-style dual encoder giving L2-normalised float32 features, with an on-disk cache.

    Build one with :func:`negspace.encoders.load_encoder`; the constructor is for backends.

    Attributes:
        spec: the model spec it was loaded from, e.g. ``"openclip:ViT-B-16/openai"``.
        fingerprint: identifies the exact weights (file hash, or hub revision).
        device: where the model runs.
        dim: embedding width ``D``.
        preprocess_id: identifies the image preprocessing (part of image cache keys).
        store: the feature cache, or None when caching is off.
        runtime: what runs the towers: ``"torch"`` or ``"onnxruntime"`` (the backend's ``runtime``).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        spec: str,
        fingerprint: str,
        device: torch.device,
        store: FeatureStore | None,
    ) -> None:
        self.backend = backend
        self.spec = spec
        self.fingerprint = fingerprint
        self.device = device
        self.show_progress = True  # progress bars by default (the CLI's -q turns them off)
        self.store = store
        self.dim = int(backend.dim)
        self.preprocess_id = backend.preprocess_id
        self.runtime = str(getattr(backend, "runtime", "torch"))
        self.workers = default_workers()  # decoding processes of encode_image_files (0: in this process)

    def __repr__(self) -> str:
        cache = None if self.store is None else str(self.store.path)
        return f"ClipEncoder(spec={self.spec!r}, device={str(self.device)!r}, dim={self.dim}, cache={cache!r})"

    # -- keys ---------------------------------------------------------------------------------

    def text_key(self, text: str, template: str = "{}", unit: bool = True) -> str:
        """Cache key of one text under one template (``unit=False``: its raw, unnormalised
        feature, kept apart)."""
        return make_key(
            kind="text" if unit else "text-raw",
            spec=self.spec,
            fingerprint=self.fingerprint,
            template=template,
            text=text,
        )

    def image_key(self, content_sha256: str) -> str:
        """Cache key of one image file, given the SHA-256 of its bytes."""
        return make_key(
            kind="image",
            spec=self.spec,
            fingerprint=self.fingerprint,
            preprocess=self.preprocess_id,
            content=content_sha256,
        )

    def _progress(self, progress: bool | None) -> bool:
        return self.show_progress if progress is None else bool(progress)

    # -- texts --------------------------------------------------------------------------------

    def encode_texts(
        self,
        texts: Sequence[str],
        template: str = "{}",
        batch_size: int = 256,
        progress: bool | None = None,
        description: str = "Encoding texts",
        unit: bool = True,
    ) -> np.ndarray:
        """Encode ``template.format(text)`` for each text (a progress bar named ``description``,
        with its rate and time left, unless ``progress`` is false; ``None`` follows
        :attr:`show_progress`). ``unit=False`` returns the model's raw features (float32, not
        normalised), for averaging over templates (:meth:`encode_texts_averaged`).

        Each text is cached on its own, so a killed run resumes where it stopped and texts shared
        between runs (class names, corpus words) are encoded once. Duplicates are encoded once.

        Returns:
            ``(len(texts), D)`` float32, rows L2-normalised, in input order.
        """
        check_batch_size(batch_size)
        _check_template(template)
        texts = [str(t) for t in texts]
        unique = list(dict.fromkeys(texts))
        found: dict[str, np.ndarray] = {}
        keys: dict[str, str] = {}
        if self.store is not None:
            keys = {t: self.text_key(t, template, unit) for t in unique}
            cached = self.store.get_many(keys.values())
            found = {t: cached[k] for t, k in keys.items() if k in cached}
        todo = self._by_token_count([t for t in unique if t not in found], template)
        if todo:
            if found:  # a resumed or repeated run says what it did not redo
                logger.info("%d of %d texts' features from the cache", len(found), len(keys))
            with tqdm(
                total=len(todo),
                desc=description,
                unit="text",
                disable=not self._progress(progress) or not todo,
                leave=False,
            ) as bar:
                for batch in _batches(todo, batch_size):
                    prompts = [template.format(t) for t in batch]
                    with torch.inference_mode():
                        raw = self.backend.encode_text_batch(prompts)
                        feats = unit_features(raw) if unit else raw.detach().float().cpu().numpy()
                    new = dict(zip(batch, feats, strict=True))
                    if self.store is not None:
                        # One transaction per batch: a killed run keeps every finished batch.
                        self.store.put_many({keys[t]: f for t, f in new.items()})
                    found.update(new)
                    bar.update(len(batch))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[t] for t in texts]).astype(np.float32, copy=False)

    def encode_texts_averaged(
        self,
        texts: Sequence[str],
        templates: Sequence[str],
        batch_size: int = 256,
        progress: bool | None = None,
        description: str = "Encoding texts",
    ) -> np.ndarray:
        """Each text's feature averaged over prompt ``templates``: the mean of the raw
        (unnormalised) features of ``template.format(text)``, then L2-normalised, as CLIP's
        prompt ensembles (and CSP's and NegRefine's code) compute it.

        Returns:
            ``(len(texts), D)`` float32, rows L2-normalised, in input order.
        """
        if not templates:
            raise NegspaceError("at least one prompt template is needed")
        total = np.zeros((len(texts), self.dim), dtype=np.float64)
        for k, template in enumerate(templates, 1):
            total += self.encode_texts(
                texts,
                template,
                batch_size,
                progress,
                unit=False,
                description=f"{description} (template {k} of {len(templates)})",
            )
        return as_unit_float32(total)

    def _by_token_count(self, texts: list[str], template: str) -> list[str]:
        """``texts`` ordered by their prompts' token counts, so a batch holds prompts of one
        length and trimming leaves no padding (WordNet prompts: 7.5 tokens on average, 9.9 per
        prompt computed when batches are formed by character length)."""
        if len(texts) < 2:
            return texts
        counts = self.backend.token_counts([template.format(t) for t in texts])
        return [text for _, text in sorted(zip(counts, texts, strict=True), key=lambda pair: pair[0])]

    # -- images -------------------------------------------------------------------------------

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """Encode in-memory PIL images (not cached: there is no file to key them by).

        Returns:
            ``(len(images), D)`` float32, rows L2-normalised.
        """
        check_batch_size(batch_size)
        chunks = [self._encode_pil(list(batch)) for batch in _batches(images, batch_size)]
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def encode_transformed(self, pixels: Sequence[torch.Tensor]) -> np.ndarray:
        """Unit float32 features of transformed images (``backend.pixel_transform()``'s outputs),
        as :meth:`encode_image_files` makes them."""
        with torch.inference_mode():
            return unit_features(self.backend.encode_pixels(torch.stack(list(pixels))))

    def _encode_pil(self, images: list[Image.Image]) -> np.ndarray:
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        with torch.inference_mode():
            return unit_features(self.backend.encode_image_batch(rgb))

    def encode_image_files(
        self,
        paths: Sequence[Path | str],
        batch_size: int = 64,
        progress: bool | None = None,
    ) -> ImageEncoding:
        """Encode image files, caching each under the hash of its bytes.

        Files are looked up in the cache first, by the hash of their bytes; a file whose path,
        size and modification time match a file hashed before is not even opened (its hash is
        remembered in the cache, as build tools remember files by their stat), and a cached file
        is never decoded. The misses go through a torch ``DataLoader`` whose ``workers`` processes decode
        and transform the next batches while the model encodes the current one (pinned memory on
        CUDA); each batch is committed to the cache at once, so a killed run keeps every finished
        batch. Files that cannot be read or decoded are skipped, logged and listed in the result;
        they never stop the run. The order of the result is the order of ``paths``.
        """
        check_batch_size(batch_size)
        files = [Path(p) for p in paths]
        features = np.zeros((len(files), self.dim), dtype=np.float32)
        skipped: dict[int, SkippedFile] = {}
        digest_of: dict[int, str] = {}
        pending: list[tuple[int, str]] = []  # (input index, cache key) awaiting the model
        n_cached = 0
        seconds = {"hash": 0.0, "decode": 0.0, "encode": 0.0}
        started = time.perf_counter()

        with (
            ThreadPoolExecutor(max_workers=_IO_WORKERS) as pool,
            tqdm(
                total=len(files),
                desc="Encoding images",
                unit="img",
                disable=not self._progress(progress) or not files,
                leave=False,
            ) as bar,
        ):
            for chunk in _batches(range(len(files)), batch_size):
                digests = self._digests([files[i] for i in chunk], pool)
                keyed: list[tuple[int, str]] = []
                for i, digest in zip(chunk, digests, strict=True):
                    if isinstance(digest, OSError):
                        skipped[i] = SkippedFile(files[i], digest.strerror or str(digest))
                        bar.update(1)
                    else:
                        digest_of[i] = digest
                        keyed.append((i, self.image_key(digest)))
                cached = self.store.get_many(k for _, k in keyed) if self.store is not None else {}
                for i, key in keyed:
                    if key in cached:
                        features[i] = cached[key]
                        n_cached += 1
                        bar.update(1)
                    else:
                        pending.append((i, key))
            seconds["hash"] = time.perf_counter() - started
            if pending:
                self._encode_misses(files, pending, features, skipped, batch_size, bar, seconds)

        if n_cached:
            logger.info("%d of %d image files' features from the cache", n_cached, len(files))
        for i in sorted(skipped):
            logger.warning("Skipping unreadable image %s: %s", skipped[i].path, skipped[i].reason)
        kept_idx = [i for i in range(len(files)) if i not in skipped]
        return ImageEncoding(
            features=features[kept_idx],
            paths=[files[i] for i in kept_idx],
            skipped=[skipped[i] for i in sorted(skipped)],
            hashes=[digest_of[i] for i in kept_idx],
            seconds=seconds,
            from_cache=n_cached,
        )

    def _digests(self, files: list[Path], pool: ThreadPoolExecutor) -> list[str | OSError]:
        """SHA-256 of each file: remembered by (path, size, mtime) when the cache knows the file,
        else read and hashed (in threads) and remembered for next time."""
        stats = list(pool.map(_stat_key, files))
        known = self.store.get_meta_many(k for k in stats if k) if self.store is not None else {}
        unknown = [j for j, k in enumerate(stats) if not k or k not in known]
        hashed = dict(zip(unknown, pool.map(_try_sha256, [files[j] for j in unknown]), strict=True))
        if self.store is not None:
            self.store.put_meta_many({stats[j]: d for j, d in hashed.items() if stats[j] and isinstance(d, str)})
        return [hashed[j] if j in hashed else known[stats[j]] for j in range(len(files))]

    def image_loader(self, files: list[Path], batch_size: int) -> torch.utils.data.DataLoader:
        """Batches of ``(indices, pixels, failures)`` over ``files``, decoded and transformed by
        ``workers`` processes ahead of the model (in this process when ``workers`` is 0)."""
        # one batch cannot overlap with anything: no worker process is worth starting for it
        workers = min(self.workers, len(files) // batch_size) if len(files) > batch_size else 0
        return torch.utils.data.DataLoader(
            _ImageFiles(files, self.backend.pixel_transform()),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=2 if workers else None,
        )

    def _encode_misses(
        self,
        files: list[Path],
        pending: list[tuple[int, str]],
        features: np.ndarray,
        skipped: dict[int, SkippedFile],
        batch_size: int,
        bar: tqdm,
        seconds: dict[str, float],
    ) -> None:
        """Decode, transform and encode the files not in the cache; cache each batch. Adds to
        ``seconds`` the time spent waiting for batches (decode) and in the model (encode)."""
        loader = iter(self.image_loader([files[i] for i, _ in pending], batch_size))
        while True:
            waited = time.perf_counter()
            batch = next(loader, None)
            encoding = time.perf_counter()
            seconds["decode"] += encoding - waited
            if batch is None:
                break
            positions, pixels, failed = batch
            for j, reason in failed:
                i = pending[j][0]
                skipped[i] = SkippedFile(files[i], reason)
            if pixels is not None:
                with torch.inference_mode():
                    feats = unit_features(self.backend.encode_pixels(pixels))
                done: dict[str, np.ndarray] = {}
                for j, feat in zip(positions, feats, strict=True):
                    i, key = pending[j]
                    features[i] = feat
                    done[key] = feat
                if self.store is not None:
                    self.store.put_many(done)
            seconds["encode"] += time.perf_counter() - encoding
            bar.update(len(positions) + len(failed))


def _stat_key(path: Path) -> str:
    """What identifies a file without opening it: absolute path, size, modification time ("" if
    it cannot be stat-ed: it is then hashed, and fails there with its reason)."""
    try:
        st = path.stat()
    except OSError:
        return ""
    return f"file-sha256:{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _try_sha256(path: Path) -> str | OSError:
    """SHA-256 of a file's content (image files are small enough to read whole)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return exc

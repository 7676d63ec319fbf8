"""One command that checks negspace on a GPU (and runs, smaller, on a CPU).

    python benchmarks/gpu_check.py                 # CUDA when present: ViT-B/16, random weights
    python benchmarks/gpu_check.py --small         # a CPU-sized run (what the test suite runs)

With random weights of the real ViT-B/16 architecture (no download), it prints:

(a) the bare image encoder's images/s on ready tensors (fp16 on CUDA, float32 on a CPU);
(b) negspace's encode pipeline on generated JPEGs (``ClipEncoder.encode_image_files``, feature
    cache off) with 0 and up to the cores' decoding workers, as a fraction of (a);
(c) end to end (encode, then score) for NegLabel and for online ANTS (a scripted MLLM that answers
    at once, the torch backend on the device), each as a fraction of (a), and ANTS / NegLabel
    (the ANTS paper's RTX 3090 figure: 0.93; negspace's goal: 0.98);
(d) every detector's scores with the torch backend on the device against NumPy on the CPU: the
    largest difference beside the float32 bound it must stay within;
(e) peak memory: the GPU's (CUDA) or the process's resident set.

It finishes in under 5 minutes on one modern GPU; ``--small`` takes seconds on a CPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ants_overhead import TableEncoder
from encode_pipeline import build_encoder, write_images
from negspace.detectors.adaneg import AdaNeg
from negspace.detectors.ants import ANTS
from negspace.detectors.mcm import MCM
from negspace.detectors.neglabel import NegLabel
from negspace.detectors.tanl import TANL
from negspace.testing import InstantMLLM

COSINE_BOUND_UNITS = 4.0  # tests/numerics.py: two float32 cosines differ by at most 4 sqrt(D) u


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def bare_encoder(encoder, batch: int, repeats: int) -> float:
    """(a) images/s of the image tower alone on ready tensors."""
    pixels = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        encoder.backend.encode_pixels(pixels)  # warm-up (cuDNN picks its kernels)
        if encoder.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            encoder.backend.encode_pixels(pixels)
        if encoder.device.type == "cuda":
            torch.cuda.synchronize()
    return rate(batch * repeats, time.perf_counter() - started)


def end_to_end(encoder, detector, batch: int, repeats: int, with_paths: bool = False) -> float:
    """(c) images/s of encoding a batch of ready tensors and scoring it."""
    pixels = torch.randn(batch, 3, 224, 224)
    paths = [f"img/{i}.png" for i in range(batch)]

    def one() -> None:
        with torch.inference_mode():
            features = encoder.backend.encode_pixels(pixels).float()
        features = torch.nn.functional.normalize(features, dim=-1).cpu().numpy()
        if with_paths:
            detector.score_features(features, images=paths)
        else:
            detector.score_features(features)

    one()
    started = time.perf_counter()
    for _ in range(repeats):
        one()
    return rate(batch * repeats, time.perf_counter() - started)


def agreement(
    dim: int, device: str, classes: int, negatives: int, rng: np.random.Generator
) -> list[tuple[str, float, float]]:
    """(d) per detector: the largest |torch on the device - NumPy on the CPU| and its bound."""
    id_text, bank, batch = unit(rng, classes, dim), unit(rng, negatives, dim), unit(rng, 64, dim)
    pool, noise = unit(rng, 4 * negatives, dim), unit(rng, 15, dim)
    eps_logit = COSINE_BOUND_UNITS * np.sqrt(dim) * 2.0**-24 / 0.01
    builds = {
        "MCM": lambda **on: MCM.from_features(id_text, **on),
        "NegLabel / CSP": lambda **on: NegLabel.from_features(id_text, bank, groups=10, **on),
        "TANL": lambda **on: TANL.from_features(id_text, pool, noise, beta=min(200, len(pool)), **on),
        "AdaNeg": lambda **on: AdaNeg.from_features(id_text, bank, groups=10, **on),
        "ANTS (frozen)": lambda **on: _frozen_ants(id_text, bank, dim, classes, **on),
    }
    rows = []
    for name, build in builds.items():
        on_cpu = build().score_features(batch)
        on_device = build(backend="torch", device=device).score_features(batch)
        # a softmax mass moves by at most min(s, 1 - s) expm1(2 delta): within 2 delta of 1 absolutely
        bound = float(np.max(np.minimum(on_cpu, 1 - on_cpu) * np.expm1(2 * eps_logit))) + 1e-12
        rows.append((name, float(np.max(np.abs(on_device - on_cpu))), bound))
    return rows


def _frozen_ants(id_text, bank, dim, classes, **on):
    detector = ANTS.from_features(
        id_text, bank, TableEncoder(dim), InstantMLLM(), [f"c{i}" for i in range(classes)], **on
    )
    detector.freeze()
    return detector


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB on the GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB resident (no GPU)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda or cpu")
    parser.add_argument("--small", action="store_true", help="a CPU-sized run: small ViT, few images")
    args = parser.parse_args()
    device = (
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    arch, images, batch, repeats = ("small", 64, 16, 2) if args.small else ("ViT-B-16", 2048, 256, 10)
    classes, negatives = (100, 1000) if args.small else (1000, 10_000)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        encoder = build_encoder(arch, folder, workers=0)
        if device == "cuda":  # build_encoder loads on the CPU; the same weights on the GPU
            from negspace.encoders import load_encoder

            encoder = load_encoder(encoder.spec, weights=folder / "weights.pt", device="cuda", use_cache=False)
        encoder.show_progress = False
        print(f"# gpu_check: {arch} (random weights) on {encoder.device}, torch {torch.__version__}, {cores} cores")
        bare = bare_encoder(encoder, batch, repeats)
        print(
            f"(a) bare image encoder ({'fp16' if device == 'cuda' else 'float32'}), ready tensors: {bare:,.1f} images/s"
        )
        paths = write_images(folder / "jpegs", images)
        for workers in sorted({0, min(cores, 8)}):
            encoder.workers = workers
            encoder.encode_image_files(paths[:batch], batch_size=batch, progress=False)  # warm-up
            tick = time.perf_counter()
            encoder.encode_image_files(paths, batch_size=batch, progress=False)
            pipeline = rate(len(paths), time.perf_counter() - tick)
            print(
                f"(b) encode pipeline, JPEGs 500x375, {workers} workers: {pipeline:,.1f} images/s = "
                f"{pipeline / bare:.2f} of (a)"
            )
        dim = encoder.dim
        id_text, bank = unit(rng, classes, dim), unit(rng, negatives, dim)
        on = {"backend": "torch", "device": device}
        neglabel = NegLabel.from_features(id_text, bank, groups=min(100, negatives), **on)
        ants = ANTS.from_features(
            id_text,
            bank,
            TableEncoder(dim),
            InstantMLLM(),
            [f"c{i}" for i in range(classes)],
            max_mllm_calls=10**9,
            **on,
        )
        nl_rate = end_to_end(encoder, neglabel, batch, repeats)
        ants_rate = end_to_end(encoder, ants, batch, repeats, with_paths=True)
        print(
            f"(c) end to end, encode + score: NegLabel {nl_rate:,.1f} images/s ({nl_rate / bare:.2f} of (a)); "
            f"ANTS online {ants_rate:,.1f} images/s ({ants_rate / bare:.2f} of (a)); ANTS / NegLabel = "
            f"{ants_rate / nl_rate:.2f} (paper: 0.93; goal: 0.98)"
        )
        for name, difference, bound in agreement(dim, device, classes, negatives, rng):
            verdict = "ok" if difference <= bound else "OUTSIDE THE BOUND"
            print(
                f"(d) {name:<16} torch/{device} vs NumPy/cpu: max |diff| {difference:.2e} (bound {bound:.2e}) {verdict}"
            )
        print(f"(e) peak memory: {peak_memory(encoder.device)}")
    print(f"# done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

"""Eager torch against ONNX Runtime on the CPU: images per second, memory, feature agreement.

    python benchmarks/onnx_runtime.py [--arch tiny|ViT-B-16] [--images 64] [--batch 16] [--rounds 1]

A random-weight model (``tiny``: the tests' model; ``ViT-B-16``: CLIP's ViT-B/16 architecture)
is saved as a user's weights, its towers exported to ONNX once (the export's time is printed;
it is paid once per weights). Then each runtime runs in a fresh process of its own, so that its
resident memory is its own: it loads the model (the ONNX one from the cached export, as every
run after the first), encodes ``--images`` ready-transformed images in batches of ``--batch``
after one warm-up batch, and reports images per second of the model and its peak resident
memory (``VmHWM``: the whole process, loading included) and its resident memory after encoding
(``VmRSS``). The features of the two runtimes are compared row by row. Printed beside the goals:
ONNX Runtime >= 1.15x torch's images/s, <= 0.5x its memory, features within the float32 bound
the tests use (``FEATURE_ERROR`` of tests/numerics.py: 1e-5 relative distance).

The machine may be shared: the load average is printed before and after; rounds alternate the
runtimes (``--rounds``) and each figure is the median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

FEATURE_ERROR = 1e-5  # tests/numerics.py: how far features of two float32 computations may lie


def save_model(arch: str, folder: Path) -> tuple[str, Path]:
    """A random-weight model saved as a user's weights: its spec and weights file."""
    from serve_load import save_model as save

    return save(arch, folder)


def memory_mb() -> dict[str, float]:
    """This process's resident memory now (VmRSS) and at its peak (VmHWM), in MB."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(line.split()[1]) / 1024
    return found


def child(args: argparse.Namespace) -> None:
    """One runtime in this fresh process: load, warm up, encode, report."""
    from negspace.encoders import load_encoder

    started = time.perf_counter()
    encoder = load_encoder(args.spec, weights=args.weights, device="cpu", cache_dir=args.cache_dir, runtime=args.child)
    load_s = time.perf_counter() - started
    transform = encoder.backend.pixel_transform()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)) for _ in range(args.batch)]
    pixels = torch.stack([transform(im) for im in images])  # one batch of real-size inputs, reused
    n_batches = max(1, args.images // args.batch)
    with torch.inference_mode():
        encoder.backend.encode_pixels(pixels)  # warm-up
        outputs = []
        started = time.perf_counter()
        for _ in range(n_batches):
            outputs.append(encoder.backend.encode_pixels(pixels).float().numpy())
        seconds = time.perf_counter() - started
    features = np.concatenate(outputs)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    np.save(args.features, features[: args.batch])
    result = {"images_per_s": n_batches * args.batch / seconds, "load_s": load_s, "threads": torch.get_num_threads()}
    print(json.dumps(result | memory_mb()))


def run_child(runtime: str, spec: str, weights: Path, cache: Path, out: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", runtime, "--spec", spec, "--weights", str(weights)]
    command += ["--cache-dir", str(cache), "--features", str(out), "--images", str(args.images)]
    command += ["--batch", str(args.batch)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {runtime} process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="tiny", help="tiny, or an open_clip architecture such as ViT-B-16")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--child", choices=("torch", "onnxruntime"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--features", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from negspace.encoders import load_encoder

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec, weights = save_model(args.arch, folder)
        cache = folder / "cache"
        started = time.perf_counter()
        load_encoder(spec, weights=weights, device="cpu", cache_dir=cache, runtime="onnxruntime")
        export_s = time.perf_counter() - started
        rounds: list[dict[str, dict]] = []
        for _ in range(args.rounds):
            rounds.append(
                {
                    runtime: run_child(runtime, spec, weights, cache, folder / f"{runtime}.npy", args)
                    for runtime in ("torch", "onnxruntime")
                }
            )
        a, b = np.load(folder / "torch.npy"), np.load(folder / "onnxruntime.npy")
    distance = float(np.max(np.linalg.norm(a.astype(np.float64) - b, axis=1)))
    load_after = os.getloadavg()

    def median(runtime: str, key: str) -> float:
        return statistics.median(r[runtime][key] for r in rounds)

    speed = statistics.median(r["onnxruntime"]["images_per_s"] / r["torch"]["images_per_s"] for r in rounds)
    peak = statistics.median(r["onnxruntime"]["VmHWM"] / r["torch"]["VmHWM"] for r in rounds)
    after = statistics.median(r["onnxruntime"]["VmRSS"] / r["torch"]["VmRSS"] for r in rounds)
    print(
        f"\n{args.arch}, random weights, batch {args.batch}, {args.images} images, {len(rounds)} round(s), "
        f"{platform.processor() or platform.machine()}, {rounds[0]['torch']['threads']} threads, "
        f"torch {torch.__version__}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(f"ONNX export (once per weights, then cached): {export_s:.1f} s including the torch load")
    print("| measure | torch | onnxruntime | ratio | goal |\n|---|---|---|---|---|")
    print(
        f"| images/s | {median('torch', 'images_per_s'):.2f} | {median('onnxruntime', 'images_per_s'):.2f} "
        f"| {speed:.2f}x | >= 1.15x: {'met' if speed >= 1.15 else 'NOT met'} |"
    )
    print(
        f"| peak resident memory (VmHWM, loading included), MB | {median('torch', 'VmHWM'):.0f} "
        f"| {median('onnxruntime', 'VmHWM'):.0f} | {peak:.2f}x | <= 0.5x: {'met' if peak <= 0.5 else 'NOT met'} |"
    )
    print(
        f"| resident memory after encoding (VmRSS), MB | {median('torch', 'VmRSS'):.0f} "
        f"| {median('onnxruntime', 'VmRSS'):.0f} | {after:.2f}x | <= 0.5x: {'met' if after <= 0.5 else 'NOT met'} |"
    )
    print(
        f"| load, s (ONNX: from the cached export) | {median('torch', 'load_s'):.1f} "
        f"| {median('onnxruntime', 'load_s'):.1f} | | |"
    )
    verdict = "met" if distance <= FEATURE_ERROR else "NOT met"
    print(f"| max distance of unit features | | {distance:.2g} | | <= {FEATURE_ERROR:g}: {verdict} |")


if __name__ == "__main__":
    main()

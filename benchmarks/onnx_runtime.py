"""Eager torch against ONNX Runtime on the CPU: images per second, memory, feature agreement.

    python benchmarks/onnx_runtime.py [--arch tiny|ViT-B-16] [--images 64] [--batch 16] [--rounds 1]

A random-weight model (``tiny``: the tests' model; ``ViT-B-16``: CLIP's ViT-B/16 architecture)
is saved as a user's weights, its towers exported to ONNX once (the export's time is printed;
it is paid once per weights). Then each runtime runs in a fresh process of its own, so that its
resident memory is its own: it loads the model (the ONNX one from the cached export, as every
run after the first), encodes ``--images`` ready-transformed images in batches of ``--batch``
after one warm-up batch, and reports images per second of the model and its peak resident
memory (``VmHWM``: the whole process, loading included) and its resident memory after encoding
(``VmRSS``). Three runtimes:

- ``torch``: eager PyTorch, both towers (what every command runs by default);
- ``onnxruntime``: both towers exported, torch still imported for the tokenizer and transform
  (what ``eval``, ``score`` and ``embed`` run with ``--runtime onnxruntime``);
- ``onnxruntime-images``: the image tower alone, in a process that never imports torch (what
  ``negspace serve --runtime onnxruntime`` runs for a detector whose text features are saved).

The features of each ONNX runtime are compared with torch's row by row. Printed beside the goals:
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
from PIL import Image

FEATURE_ERROR = 1e-5  # tests/numerics.py: how far features of two float32 computations may lie
RUNTIMES = ("torch", "onnxruntime", "onnxruntime-images")
ONNX_RUNTIMES = RUNTIMES[1:]


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
    """One runtime in this fresh process: load, warm up, encode, report (``onnxruntime-images``
    never imports torch: the import would cost the memory it is measured without)."""
    started = time.perf_counter()
    if args.child == "onnxruntime-images":
        from negspace.runconfig import ModelConfig
        from negspace.runs import load_model

        config = ModelConfig(
            spec=args.spec, weights=args.weights, device="cpu", cache_dir=args.cache_dir, runtime="onnxruntime"
        )
        encoder = load_model(config, images_only=True)
        if type(encoder).__name__ != "OnnxImageEncoder":
            raise SystemExit("the torch-free image encoder did not load (no checked export in the cache?)")

        def encode(pixels: np.ndarray) -> np.ndarray:
            return encoder.backend.encode_pixels(pixels)

        def stack(arrays: list) -> np.ndarray:
            return np.stack(arrays)
    else:
        import torch

        from negspace.encoders import load_encoder

        encoder = load_encoder(
            args.spec, weights=args.weights, device="cpu", cache_dir=args.cache_dir, runtime=args.child
        )

        def encode(pixels: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return encoder.backend.encode_pixels(pixels).float().numpy()

        stack = torch.stack
    load_s = time.perf_counter() - started
    transform = encoder.backend.pixel_transform()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)) for _ in range(args.batch)]
    pixels = stack([transform(im) for im in images])  # one batch of real-size inputs, reused
    n_batches = max(1, args.images // args.batch)
    encode(pixels)  # warm-up
    outputs = []
    started = time.perf_counter()
    for _ in range(n_batches):
        outputs.append(encode(pixels))
    seconds = time.perf_counter() - started
    features = np.concatenate(outputs)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    np.save(args.features, features[: args.batch])
    torch_loaded = "torch" in sys.modules
    result = {"images_per_s": n_batches * args.batch / seconds, "load_s": load_s, "torch_imported": torch_loaded}
    if torch_loaded:
        result["threads"] = sys.modules["torch"].get_num_threads()
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
    parser.add_argument("--child", choices=RUNTIMES, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--features", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    import torch

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
                    for runtime in RUNTIMES
                }
            )
        reference = np.load(folder / "torch.npy").astype(np.float64)
        distances = {
            runtime: float(np.max(np.linalg.norm(reference - np.load(folder / f"{runtime}.npy"), axis=1)))
            for runtime in ONNX_RUNTIMES
        }
    load_after = os.getloadavg()

    def median(runtime: str, key: str) -> float:
        return statistics.median(r[runtime][key] for r in rounds)

    def ratio(runtime: str, key: str) -> float:
        return statistics.median(r[runtime][key] / r["torch"][key] for r in rounds)

    print(
        f"\n{args.arch}, random weights, batch {args.batch}, {args.images} images, {len(rounds)} round(s), "
        f"{platform.processor() or platform.machine()}, {rounds[0]['torch']['threads']} threads, "
        f"torch {torch.__version__}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(f"ONNX export (once per weights, then cached): {export_s:.1f} s including the torch load")
    torch_free = [r["onnxruntime-images"]["torch_imported"] for r in rounds]
    print(f"onnxruntime-images imported torch: {'yes' if any(torch_free) else 'no'}")
    print("| measure | torch | " + " | ".join(f"{r} | ratio" for r in ONNX_RUNTIMES) + " | goal |")
    print("|---" * (3 + 2 * len(ONNX_RUNTIMES)) + "|")
    rows = [
        ("images/s", "images_per_s", ">= 1.15x", lambda x: x >= 1.15, "{:.2f}"),
        ("peak resident memory (VmHWM, loading included), MB", "VmHWM", "<= 0.5x", lambda x: x <= 0.5, "{:.0f}"),
        ("resident memory after encoding (VmRSS), MB", "VmRSS", "<= 0.5x", lambda x: x <= 0.5, "{:.0f}"),
    ]
    for label, key, goal, met, fmt in rows:
        cells = [fmt.format(median("torch", key))]
        verdicts = []
        for runtime in ONNX_RUNTIMES:
            x = ratio(runtime, key)
            cells += [fmt.format(median(runtime, key)), f"{x:.2f}x"]
            verdicts.append(f"{runtime}: {'met' if met(x) else 'NOT met'}")
        print(f"| {label} | " + " | ".join(cells) + f" | {goal} ({'; '.join(verdicts)}) |")
    loads = " | ".join(f"{median(r, 'load_s'):.1f} | " for r in ONNX_RUNTIMES)
    print(f"| load, s (ONNX: from the cached export) | {median('torch', 'load_s'):.1f} | {loads} |")
    cells = " | ".join(f"{distances[r]:.2g} | " for r in ONNX_RUNTIMES)
    verdict = "met" if max(distances.values()) <= FEATURE_ERROR else "NOT met"
    print(f"| max distance of unit features from torch's | | {cells} | <= {FEATURE_ERROR:g}: {verdict} |")


if __name__ == "__main__":
    main()

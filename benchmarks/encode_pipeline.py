"""Encoding throughput: does the pipeline keep the model busy?

    python benchmarks/encode_pipeline.py [--images 512] [--workers N] [--batch 64] [--arch small|ViT-B-16]

On a generated folder of JPEGs of realistic size (500 x 375), prints images per second of
(a) the model alone on ready input tensors, (b) decoding and preprocessing alone, with the same
worker processes, (c) the whole pipeline (``ClipEncoder.encode_image_files``, feature cache off),
and the ratio ``c / min(a, b)``: 1.0 means the pipeline runs as fast as its slower stage (the
overlap hides the faster one), the bound when the model and the decoders use different hardware
(a GPU and the CPU). On a CPU-only machine the two share the cores, so the bound is
``1 / (1/a + 1/b)``, printed too. ``--arch small`` is a small ViT
(224 px input, width 192, 4 layers; random weights) that keeps the model from hiding the
decoding on a CPU; ``--arch ViT-B-16`` is the real CLIP ViT-B/16 architecture with random weights.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from negspace.encoders import load_encoder
from negspace.encoders.base import default_workers

SMALL_CONFIG = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 192, "patch_size": 16, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}


def write_images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        # smooth colour fields plus noise: JPEG sizes like photographs' (not pure noise)
        base = rng.integers(0, 255, (3,), dtype=np.uint8)
        gradient = np.linspace(0, 80, 500, dtype=np.float32)[None, :, None]
        pixels = np.clip(base + gradient + rng.normal(0, 20, (375, 500, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def build_encoder(arch: str, folder: Path, workers: int):
    import open_clip

    torch.manual_seed(0)
    if arch == "small":
        config = folder / "bench-small-vit.json"
        config.write_text(json.dumps(SMALL_CONFIG), encoding="utf-8")
        model, spec = open_clip.CLIP(**SMALL_CONFIG), f"openclip:{config}/none"
    else:
        model, spec = open_clip.create_model(arch, pretrained=None), f"openclip:{arch}/none"
    weights = folder / "weights.pt"
    torch.save(model.state_dict(), weights)
    encoder = load_encoder(spec, weights=weights, device="cpu", use_cache=False)
    encoder.workers = workers
    encoder.show_progress = False
    return encoder


def rate(n: int, seconds: float) -> float:
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--arch", default="small", help="small, or an open_clip architecture such as ViT-B-16")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = write_images(folder / "images", args.images)
        encoder = build_encoder(args.arch, folder, args.workers)

        # (b) decoding and preprocessing alone, with the same workers
        loader = encoder.image_loader(paths, args.batch)
        start = time.perf_counter()
        ready = [pixels for _, pixels, _ in loader]
        decode = rate(args.images, time.perf_counter() - start)

        # (a) the model alone on the ready tensors
        with torch.inference_mode():
            encoder.backend.encode_pixels(ready[0])  # warm-up
            start = time.perf_counter()
            for pixels in ready:
                encoder.backend.encode_pixels(pixels)
            model = rate(args.images, time.perf_counter() - start)
        del ready

        # (c) the whole pipeline, cache off (every file decoded and encoded)
        start = time.perf_counter()
        encoder.encode_image_files(paths, batch_size=args.batch, progress=False)
        pipeline = rate(args.images, time.perf_counter() - start)

        # the same without worker processes: decoding in this process, no overlap
        encoder.workers = 0
        start = time.perf_counter()
        encoder.encode_image_files(paths, batch_size=args.batch, progress=False)
        inline = rate(args.images, time.perf_counter() - start)

    slower = min(model, decode)
    print(
        f"{args.images} JPEGs of 500x375, batch {args.batch}, {args.workers} decoding workers, "
        f"torch {torch.get_num_threads()} threads, arch {args.arch}, CPU"
    )
    print(f"(a) model alone on ready tensors:      {model:8.1f} images/s")
    print(f"(b) decode + preprocess alone:         {decode:8.1f} images/s")
    print(f"(c) whole pipeline:                    {pipeline:8.1f} images/s")
    print(
        f"    c / min(a, b) = {pipeline / slower:.2f}   (bound: 1.0 when model and decoding use different "
        "hardware, e.g. a GPU; target >= 0.9)"
    )
    shared = 1.0 / (1.0 / model + 1.0 / decode)
    print(
        f"    on a CPU both stages share the cores: bound 1 / (1/a + 1/b) = {shared:.1f} images/s, "
        f"c / that = {pipeline / shared:.2f}"
    )
    print(f"    without workers (decode inline):   {inline:8.1f} images/s  (c is {pipeline / inline:.2f}x this)")


if __name__ == "__main__":
    main()

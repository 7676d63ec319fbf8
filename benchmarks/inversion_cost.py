"""The cost of InterNeg's test-time inversion against NegLabel's score.

    python benchmarks/inversion_cost.py [--arch small|ViT-B-16] [--batch 16] [--steps 10]

Builds a CLIP model with random weights (``small``: encode_pipeline.py's small ViT, text tower 2
layers x 128; ``ViT-B-16``: the real architecture, text tower 12 x 512), inverts a
batch of image features with :class:`negspace.encoders.inversion.PseudoTokenInverter` (the
authors' 10 AdamW steps, one random ImageNet template per image per step) and prints: inverted
images per second, text-tower passes per inverted image (each pass is over the whole batch),
NegLabel's images per second for the same model width (K = 1000, M = 2000), and the ratio; and,
by formula, the FLOPs of one inverted image for ViT-B/16 against its NegLabel score.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from encode_pipeline import build_encoder
from negspace.detectors.neglabel import NegLabel
from negspace.encoders.inversion import PseudoTokenInverter


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="small", help="small, or an open_clip architecture such as ViT-B-16")
    parser.add_argument("--batch", type=int, default=16, help="images inverted together")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        encoder = build_encoder(args.arch, Path(tmp), workers=0)
    rng = np.random.default_rng(0)
    images = unit(rng, args.batch, encoder.dim)
    inverter = PseudoTokenInverter(encoder, steps=args.steps)
    inverter(images[:2])  # warm-up
    started = time.perf_counter()
    learned = inverter(images)
    seconds = time.perf_counter() - started
    cosine = float(np.mean(np.sum(learned * images, axis=1)))

    neglabel = NegLabel.from_features(unit(rng, 1000, encoder.dim), unit(rng, 2000, encoder.dim), groups=5)
    batch = unit(rng, 256, encoder.dim)
    neglabel.score_features(batch)
    started = time.perf_counter()
    for _ in range(20):
        neglabel.score_features(batch)
    neglabel_rate = 20 * len(batch) / (time.perf_counter() - started)

    text = encoder.backend.model.transformer
    width, layers = text.width, len(text.resblocks)
    print(
        f"# {args.arch}, random weights; text tower {layers} layers x {width}; torch threads {torch.get_num_threads()}"
    )
    print(
        f"inversion: {args.batch} images in {seconds:.2f} s = {args.batch / seconds:.1f} inverted images/s; "
        f"{args.steps + 1} text-tower passes per batch ({args.steps} forward+backward, 1 forward), "
        f"so {(args.steps + 1) / args.batch:.2f} passes per inverted image; mean cos(learned, image) {cosine:.3f} "
        "(random weights)"
    )
    print(
        f"NegLabel (K 1000, M 2000, G 5): {neglabel_rate:,.0f} images/s: an inverted image costs "
        f"{neglabel_rate / (args.batch / seconds):,.0f}x its score"
    )
    per_token = 24 * 512 * 512 * 12  # ViT-B/16 text tower: 12 layers x (4 w^2 + 8 w^2) multiply-adds x 2
    prompt = 10 * per_token  # a CLIP template with the pseudo-token: about 10 tokens
    inverted = (3 * args.steps + 1) * prompt  # backward ~ 2 forwards
    score = 2 * 512 * 3000
    print(
        f"ViT-B/16 by formula: {prompt / 1e9:.2f} GFLOP per prompt forward, {inverted / 1e9:.0f} GFLOP per inverted "
        f"image ({args.steps} steps), {score / 1e6:.1f} MFLOP per NegLabel score: {inverted / score:,.0f}x"
    )


if __name__ == "__main__":
    main()

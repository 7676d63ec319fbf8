"""`negspace score` over a generated collection: memory stays flat, and a `kill -9` resumes.

    python benchmarks/score_collection.py [--images 10000] [--chunk 512]

Writes ``--images`` small JPEGs, saves an MCM detector on a random-weight ViT (built from a
config, as the tests do), then runs `negspace score` as a separate process, sampling its
resident memory (``/proc/PID/status``) every 0.2 s. The first run is killed with SIGKILL once
about a third of the parts are written; the second run resumes. Prints the memory over each run
(first, median and peak after the model loaded; flat = the peak stays near the median), the
rows written before the kill, and checks that the final table holds every image exactly once.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SMALL_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run(command: list[str], out: Path, kill_at_parts: int | None) -> tuple[list[float], int]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    while process.poll() is None:
        value = rss_mib(process.pid)
        if value is not None:
            samples.append(value)
        if kill_at_parts is not None and len(list(out.glob("part-*.parquet"))) >= kill_at_parts:
            process.send_signal(signal.SIGKILL)
        time.sleep(0.2)
    return samples, process.returncode


def describe(samples: list[float]) -> str:
    steady = samples[len(samples) // 4 :] or samples  # after the model and the detector loaded
    return (f"RSS first {samples[0]:.0f} MiB, median {statistics.median(steady):.0f} MiB, "
            f"peak {max(steady):.0f} MiB over {len(samples)} samples")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=512)
    args = parser.parse_args()
    import open_clip
    import pyarrow.dataset as ds

    from negspace.detectors.mcm import MCM
    from negspace.encoders import load_encoder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        folder = root / "collection"
        for i in range(args.images):
            sub = folder / f"{i // 1000:02d}"
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(sub / f"{i:05d}.jpg")
        config = root / "bench-tiny.json"
        config.write_text(json.dumps(SMALL_CONFIG))
        torch.manual_seed(0)
        torch.save(open_clip.CLIP(**SMALL_CONFIG).state_dict(), root / "w.pt")
        spec = f"openclip:{config}/none"
        encoder = load_encoder(spec, weights=root / "w.pt", device="cpu", use_cache=False)
        MCM.from_encoder(encoder, [f"class {k}" for k in range(100)]).save(root / "detector")
        out = root / "scores"
        command = [sys.executable, "-m", "negspace.cli", "score", str(folder), "--detector", str(root / "detector"),
                   "--out", str(out), "--threshold", "0.011", "--chunk-size", str(args.chunk), "--no-cache",
                   "--model", spec, "--weights", str(root / "w.pt"), "--device", "cpu", "-q"]
        parts = -(-args.images // args.chunk)
        first, code = run(command, out, kill_at_parts=max(1, parts // 3))
        before = ds.dataset(out, format="parquet").count_rows()
        second, code2 = run(command, out, kill_at_parts=None)
        table = ds.dataset(out, format="parquet").to_table(columns=["path"]).column("path").to_pylist()
    print(f"{args.images:,} images, parts of {args.chunk}: killed run (exit {code}) wrote {before:,} rows; "
          f"{describe(first)}")
    print(f"resumed run (exit {code2}): {describe(second)}")
    print(f"final table: {len(table):,} rows, {len(set(table)):,} distinct paths "
          f"({'every image exactly once' if len(table) == len(set(table)) == args.images else 'MISMATCH'})")


if __name__ == "__main__":
    main()

"""What `negspace eval` (every method) and `negspace bench` write stays what it was.

The outputs of a fixed run (tiny model, generated images, a scripted MLLM server) are recorded in
``tests/data/recorded_outputs.json``: `metrics.json` and `results.csv`, with what changes from
run to run set aside (times, versions, the command line, temporary paths, the server's address).
Refactoring must leave them as they are. Numbers are compared within 1e-4: they come from float32
scores whose last digits follow the CPU's BLAS kernel (see ``numerics.py``) and are rounded when
written; every string, count and key must be identical.

To record anew after an intended change: ``NEGSPACE_RECORD_OUTPUTS=1 pytest tests/test_recorded_outputs.py``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from negspace.bench.miniature import write_miniature
from negspace.bench.suites import load_suite
from negspace.cli import main

pytestmark = pytest.mark.numerics  # its numbers are float32 scores: checked under other BLAS kernels too

RECORD = Path(__file__).parent / "data" / "recorded_outputs.json"
VOLATILE = {
    "seconds",
    "seconds_per_stage",
    "command",
    "negspace_version",
    "torch_version",
    "weights_fingerprint",
    "mllm_stats",
    "saved_detector",
}
# Files round their numbers (results.csv: 4 decimals of a percent), so a float32 difference in the
# last digit of a score may move a printed digit: 1e-4 absolute, far below any real change (one
# swapped pair of these tiny sets moves an AUROC by 2%).
TOLERANCE = 1e-4
EVAL_RUNS = {
    "mcm": [],
    "neglabel": ["--num-negatives", "300", "--groups", "5"],
    "tanl": ["--tanl-beta", "100", "--tanl-queue-length", "8", "--tanl-otsu-window", "50"],
    "adaneg": ["--num-negatives", "300", "--adaneg-memory-length", "3"],
    "ants": ["--num-negatives", "300", "--groups", "5", "--ants-schedule", "scaled"],
}


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recorded")
    rng = np.random.default_rng(7)
    for name, count in (("id", 8), ("ood_a", 6), ("ood_b", 5)):
        (root / name).mkdir()
        for k in range(count):
            if name == "id":
                pixels = np.zeros((40, 48, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
            else:
                pixels = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{k}.png")
    (root / "classes.txt").write_text("red square\ngreen square\nblue square\n", encoding="utf-8")
    write_miniature(load_suite("imagenet10-20"), root / "bench-data", per_set=3)
    return root


def _normalise(value, replace: dict[str, str]):
    if isinstance(value, dict):
        return {k: _normalise(v, replace) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_normalise(v, replace) for v in value]
    if isinstance(value, str):
        for old, new in replace.items():
            value = value.replace(old, new)
        try:
            return float(value) if value.strip() else value
        except ValueError:
            return value
    return value


def _read(out: Path, replace: dict[str, str]) -> dict:
    with (out / "results.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {
        "metrics.json": _normalise(json.loads((out / "metrics.json").read_text(encoding="utf-8")), replace),
        "results.csv": _normalise(rows, replace),
    }


def _differences(got, want, where: str = "") -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        if got.keys() != want.keys():
            return [f"{where}: keys {sorted(set(got) ^ set(want))} differ"]
        return [d for k in want for d in _differences(got[k], want[k], f"{where}/{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items, recorded {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want, strict=False)) for d in _differences(g, w, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        same = (math.isnan(want) and math.isnan(got)) or abs(got - want) <= TOLERANCE * 1.01
        return [] if same else [f"{where}: {got!r}, recorded {want!r}"]
    return [] if got == want and type(got) is type(want) else [f"{where}: {got!r}, recorded {want!r}"]


def test_eval_and_bench_write_what_they_wrote_before(tmp_path, image_sets, tiny_openclip, mllm_server):
    server, _ = mllm_server
    model = ["--model", tiny_openclip.spec, "--weights", str(tiny_openclip.weights), "--device", "cpu", "-q"]
    replace = {
        server.spec: "<MLLM>",
        server.url_for("/v1"): "<MLLM-ENDPOINT>",
        server.model: "<MLLM-MODEL>",
        str(tmp_path): "<OUT>",
        str(image_sets): "<DATA>",
        str(tiny_openclip.folder): "<MODEL>",
        # the random weights' bytes depend on the CPU kernels that drew them; the backbone record shows their digest
        hashlib.sha256(tiny_openclip.weights.read_bytes()).hexdigest()[:12]: "<WEIGHTS-SHA256>",
    }
    got = {}
    for method, extra in EVAL_RUNS.items():
        out = tmp_path / f"eval-{method}"
        mllm = ["--mllm", server.spec] if method == "ants" else []
        assert (
            main(
                [
                    "eval",
                    "--method",
                    method,
                    "--classes",
                    str(image_sets / "classes.txt"),
                    "--id",
                    str(image_sets / "id"),
                    "--ood",
                    f"a={image_sets / 'ood_a'}",
                    "--ood",
                    f"b={image_sets / 'ood_b'}",
                    "--batch-size",
                    "4",
                    "--out",
                    str(out),
                    *extra,
                    *mllm,
                    *model,
                ]
            )
            == 0
        ), method
        got[f"eval {method}"] = _read(out, replace)
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "--suite",
                "imagenet10-20",
                "--data-root",
                str(image_sets / "bench-data"),
                "--method",
                "mcm,neglabel,tanl,adaneg,ants",
                "--no-count-check",
                "--batch-size",
                "2",
                "--ants-schedule",
                "scaled",
                "--mllm",
                server.spec,
                "--out",
                str(out),
                *model,
            ]
        )
        == 0
    )
    got["bench imagenet10-20"] = _read(out, replace)
    for path in tmp_path.rglob("*.json"):  # every JSON file written (metrics, saved spaces) is strict JSON
        json.loads(
            path.read_text(encoding="utf-8"), parse_constant=lambda c, path=path: pytest.fail(f"{path} holds {c}")
        )
    if os.environ.get("NEGSPACE_RECORD_OUTPUTS"):
        RECORD.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    recorded = json.loads(RECORD.read_text(encoding="utf-8"))
    differences = _differences(got, recorded)
    assert not differences, "\n".join(differences[:30])

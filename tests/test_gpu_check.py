"""benchmarks/gpu_check.py runs (CPU-sized) and says what it measured: every section with its
numbers, the fractions it prints being the ratios of the rates it prints, and every detector's
torch scores within the float32 bound of NumPy's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
NUMBER = r"([\d,]+\.\d+)"
DETECTORS = ["MCM", "NegLabel / CSP", "TANL", "AdaNeg", "ANTS (frozen)"]


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _is_ratio(printed: str, numerator: str, denominator: str) -> bool:
    """``printed`` (two decimals) is ``numerator / denominator``, both printed with one decimal:
    within the ratio's range over their rounding, widened by its own."""
    n, d = _number(numerator), _number(denominator)
    low, high = (n - 0.05) / (d + 0.05), (n + 0.05) / max(d - 0.05, 1e-9)
    return low - 0.005 <= _number(printed) <= high + 0.005


@pytest.mark.numerics
def test_gpu_check_runs_on_a_cpu_and_every_backend_agrees():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--device", "cpu"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    bare = re.search(rf"^\(a\) bare image encoder \(float32\), ready tensors: {NUMBER} images/s$", out, re.M)
    assert bare and _number(bare.group(1)) > 0, out
    bare_rate = bare.group(1)
    pipeline = re.findall(
        rf"^\(b\) encode pipeline, JPEGs 500x375, (\d+) workers: {NUMBER} images/s = "
        rf"(\d+\.\d\d) of \(a\)$",
        out,
        re.M,
    )
    assert pipeline and pipeline[0][0] == "0" and len(pipeline) in (1, 2), out
    for _, rate, fraction in pipeline:
        assert _number(rate) > 0 and _is_ratio(fraction, rate, bare_rate), (rate, fraction, bare_rate)
    end = re.search(
        rf"^\(c\) end to end, encode \+ score: NegLabel {NUMBER} images/s \((\d+\.\d\d) of \(a\)\); "
        rf"ANTS online {NUMBER} images/s \((\d+\.\d\d) of \(a\)\); ANTS / NegLabel = (\d+\.\d\d) "
        r"\(paper: 0\.93; goal: 0\.98\)$",
        out,
        re.M,
    )
    assert end, out
    neglabel, neglabel_fraction, ants, ants_fraction, ratio = end.groups()
    assert _is_ratio(neglabel_fraction, neglabel, bare_rate) and _is_ratio(ants_fraction, ants, bare_rate)
    assert _is_ratio(ratio, ants, neglabel)
    agreement = re.findall(
        r"^\(d\) (.+?)\s+torch/cpu vs NumPy/cpu: max \|diff\| (\S+) \(bound (\S+)\) (.+)$", out, re.M
    )
    assert [name for name, *_ in agreement] == DETECTORS, out
    for name, difference, bound, verdict in agreement:
        # the largest difference is inside the bound it prints (a softmax mass moves by at most half
        # of expm1(2 delta), delta well under 1 here), and the verdict says so
        assert float(difference) <= float(bound) < 0.5 and verdict == "ok", (name, difference, bound, verdict)
    memory = re.search(r"^\(e\) peak memory: ([\d,]+) MiB resident \(no GPU\)$", out, re.M)
    assert memory and _number(memory.group(1)) > 0, out

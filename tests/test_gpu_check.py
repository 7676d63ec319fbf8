"""benchmarks/gpu_check.py runs (CPU-sized) and says what it measured: every section, and every
detector's torch scores within the float32 bound of NumPy's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_on_a_cpu_and_every_backend_agrees():
    result = subprocess.run([sys.executable, str(SCRIPT), "--small", "--device", "cpu"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for section in ("(a) bare image encoder", "(b) encode pipeline", "(c) end to end", "(e) peak memory"):
        assert any(line.startswith(section) for line in lines), section
    agreement = [line for line in lines if line.startswith("(d)")]
    assert len(agreement) == 5 and all(line.endswith(" ok") for line in agreement), agreement
    assert "ANTS / NegLabel = " in result.stdout

"""benchmarks/full_size.py at a small scale: five real benchmark processes, one killed by SIGKILL
while encoding, and the re-run encodes exactly the images the killed one had not cached."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "full_size.py"


def test_the_full_size_run_resumes_after_sigkill_and_reports_each_stage(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--work", str(tmp_path), "--scale", "0.004", "--methods", "mcm", "--shots", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    total = int(re.search(r"(\d[\d,]*) images, small runs", out).group(1).replace(",", ""))
    cached = int(re.search(r"exit -9\): ([\d,]+) of", out).group(1).replace(",", ""))
    assert 0 < cached < total  # killed in the middle of encoding, its finished batches kept
    encoded = int(re.search(r"the resumed run encoded ([\d,]+) images: exactly", out).group(1).replace(",", ""))
    assert encoded == total - cached
    assert re.search(rf"5\. full, from the cache: {total:,} images \({total:,} from the cache\)", out)
    for stage in ("listing and checking", "images: hash", "images: decode", "images: encode", "mcm: scoring", "report"):
        assert re.search(rf"^  {re.escape(stage)}\s+\d", out, re.MULTILINE), stage
    assert re.search(r"memory per image \(cached runs, peak RSS\): -?[\d,]+ bytes", out)

"""Print two OpenBLAS kernel families this CPU can run that differ from the one NumPy picks.

CI runs the numerical tests again under each (``OPENBLAS_CORETYPE``): a float32 result depends on
the BLAS kernel, and a tolerance tuned to one kernel fails on another CPU. NumPy's OpenBLAS is
built with DYNAMIC_ARCH and obeys the variable; each choice is checked by starting NumPy under it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

# (OpenBLAS core type, the /proc/cpuinfo flags it needs), newest first.
X86_KERNELS = [
    ("SkylakeX", {"avx512f", "avx512bw", "avx512vl"}),
    ("Haswell", {"avx2", "fma"}),
    ("Sandybridge", {"avx"}),
    ("Nehalem", {"sse4_2"}),
]
PROBE = (
    "from threadpoolctl import threadpool_info; import numpy; "
    "print(next(i['architecture'] for i in threadpool_info() if i['internal_api'] == 'openblas'))"
)


def architecture(coretype: str | None) -> str:
    env = dict(os.environ)  # None: the kernel this environment runs the suite with
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    return subprocess.run(
        [sys.executable, "-c", PROBE], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def main() -> int:
    if platform.machine() not in ("x86_64", "AMD64"):
        print("ARMV8")  # the generic kernel; every aarch64 CPU runs it
        return 0
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), []))
    default = architecture(None)
    chosen = [
        name
        for name, needs in X86_KERNELS
        if needs <= flags and name.lower() != default.lower() and architecture(name).lower() == name.lower()
    ][:2]
    print(f"NumPy's OpenBLAS runs {default} here; also testing under {', '.join(chosen)}", file=sys.stderr)
    print(" ".join(chosen))
    return 0 if len(chosen) == 2 else 1


if __name__ == "__main__":
    sys.exit(main())

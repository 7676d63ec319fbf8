"""Where a detector's scoring kernels run: NumPy arrays (the default) or torch tensors.

``backend="torch"`` runs the same kernels (:mod:`negspace.torch_scoring`) on torch tensors, on
CUDA when it is present (``device="auto"``) or on the device asked for. Text banks are moved to
the device once; a batch given as a NumPy array is moved per call, a tensor already on the
device is used in place. Scores always come back as NumPy float64 arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from negspace import scoring
from negspace.scoring import as_unit_rows

BACKENDS = ("numpy", "torch")


@dataclass(frozen=True)
class Backend:
    """A kernel set and the device its arrays live on (``"cpu"`` for NumPy)."""

    name: str = "numpy"
    device: str = "cpu"

    def params(self) -> dict[str, str]:
        """What ``get_params`` reports: nothing for the default, else the backend and device."""
        return {} if self.name == "numpy" else {"backend": self.name, "device": self.device}

    @property
    def ops(self) -> ModuleType:
        """The kernel module: :mod:`negspace.scoring` or :mod:`negspace.torch_scoring`."""
        if self.name == "numpy":
            return scoring
        from negspace import torch_scoring

        return torch_scoring

    def asarray(self, array: np.ndarray) -> Any:
        """A float32 matrix the detector keeps (text features), on the backend's device."""
        if self.name == "numpy":
            return np.asarray(array, dtype=np.float32)
        import torch

        return torch.as_tensor(np.asarray(array, dtype=np.float32), device=self.device)

    def unit_rows(self, features: Any, name: str, dim: int | None = None) -> Any:
        """A batch validated and L2-normalised (see :func:`as_unit_rows`), on the device."""
        if self.name == "numpy":
            return as_unit_rows(_to_numpy(features), name, dim, copy=False)
        return self.ops.as_unit_rows(features, name, dim, device=self.device)

    def zeros(self, shape: int | tuple[int, ...], dtype: str = "float64") -> Any:
        if self.name == "numpy":
            return np.zeros(shape, dtype=dtype)
        import torch

        return torch.zeros(shape, dtype=getattr(torch, dtype), device=self.device)

    def index(self, index: np.ndarray) -> Any:
        """Host integer indices in the backend's form (NumPy indexes torch tensors on the CPU only)."""
        if self.name == "numpy":
            return index
        import torch

        return torch.as_tensor(index, dtype=torch.long, device=self.device)


def to_numpy(array: Any, dtype: Any = np.float64) -> np.ndarray:
    """A backend array as a host NumPy array of ``dtype``."""
    return np.asarray(_to_numpy(array), dtype=dtype)


def _to_numpy(array: Any) -> Any:
    if hasattr(array, "detach"):  # a torch tensor, on any device
        return array.detach().cpu().numpy()
    return array


def resolve_backend(backend: str = "numpy", device: str = "auto") -> Backend:
    """Check a backend name and device; ``device="auto"`` is CUDA when present, else the CPU.

    Raises:
        ValueError: an unknown backend, a device for the NumPy backend, or CUDA asked for on a
            machine without it (one sentence, for the CLI).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "numpy":
        if device not in ("auto", "cpu"):
            raise ValueError(f"the numpy backend runs on the CPU; device {device!r} needs backend='torch'")
        return Backend("numpy", "cpu")
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"device {device!r} is not a torch device: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but torch sees no CUDA device on this machine")
    return Backend("torch", str(resolved))

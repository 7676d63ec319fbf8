"""Which library runs a model's towers: ``torch`` (eager PyTorch) or ``onnxruntime``.

``"onnxruntime"`` exports the image and text towers to ONNX once (cached beside the feature
cache, keyed by the weights' fingerprint) and runs them with ONNX Runtime on the CPU. With both
towers torch stays imported (for the tokenizer) and the process is no smaller; serving a
detector whose text features are saved runs the image tower alone without torch
(:mod:`negspace.encoders.onnx_images`), in a third of eager torch's memory on ViT-B/16 (see
``benchmarks/onnx_runtime.py``).
This module stays free of heavy imports: the command line validates with it.
"""

from __future__ import annotations

from negspace.errors import NegspaceError, arg

__all__ = ["RUNTIMES", "check_runtime"]

RUNTIMES = ("torch", "onnxruntime")


def check_runtime(runtime: str) -> str:
    """``runtime`` if it is one of :data:`RUNTIMES`, else a :class:`NegspaceError` naming the option."""
    if runtime not in RUNTIMES:
        raise NegspaceError(f"{arg('runtime')} must be one of {', '.join(RUNTIMES)}, got {runtime!r}.")
    return runtime

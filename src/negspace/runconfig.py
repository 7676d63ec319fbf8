"""What a whole run is made of, as frozen dataclasses: the model, the MLLM, the method and its run.

These are what :func:`negspace.evaluate`, :func:`negspace.bench.run_suite` and
:func:`negspace.score_collection` take, and what the command line builds from its options right
after parsing (no option object travels below the command line). Every default is the paper's or
the command line's, written once here or in the method's own config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negspace.backend import BACKENDS
from negspace.corpus.mining import MiningConfig
from negspace.detectors.tanl import DEFAULT_CORPUS
from negspace.encoders.runtimes import check_runtime
from negspace.evaluation import STREAM_MODES
from negspace.reprs import with_config_repr

DEFAULT_MODEL = "openclip:ViT-B-16/openai"


@with_config_repr
@dataclass(frozen=True)
class ModelConfig:
    """The CLIP model and how images reach it.

    ``spec`` is ``openclip:ARCH/PRETRAINED`` or ``hf:NAME_OR_PATH``; ``weights`` a local
    checkpoint file or folder used instead of the hub; ``features`` a feature table (from
    ``negspace embed``) whose rows are reused by content hash instead of encoding those images;
    ``runtime`` what runs the towers: ``"torch"`` or ``"onnxruntime"`` (CPU only, see
    :func:`negspace.encoders.load_encoder`).
    """

    spec: str = DEFAULT_MODEL
    weights: Path | None = None
    device: str = "auto"
    preprocess: str = "model"
    cache_dir: Path | None = None
    use_cache: bool = True
    workers: int | None = None  # decoding processes (None: the usable cores, at most 8)
    features: Path | None = None
    progress: bool = True
    runtime: str = "torch"

    def __post_init__(self) -> None:
        check_runtime(self.runtime)


@with_config_repr
@dataclass(frozen=True)
class MLLMConfig:
    """The multimodal LLM ANTS asks (see "Using an MLLM" in the README)."""

    spec: str
    text_spec: str | None = None  # a second model for text-only prompts (VSNL)
    use_cache: bool = True
    cache_dir: Path | None = None
    image_size: int = 448
    concurrency: int = 8
    timeout: float = 60.0
    retries: int = 4
    max_wait: float = 30.0
    api_key_env: str = "OPENAI_API_KEY"
    device: str = "auto"
    batch_size: int = 8


@with_config_repr
@dataclass(frozen=True)
class NegativesConfig:
    """Where a negative-label bank comes from: mined from a corpus, or a label file."""

    mining: MiningConfig = field(default_factory=MiningConfig)
    labels_file: Path | None = None  # a file from `negspace mine` instead of mining


@with_config_repr
@dataclass(frozen=True)
class ANTSRunConfig:
    """How an ANTS run is set up beyond its :class:`~negspace.detectors.ants.ANTSConfig`.

    ``schedule="scaled"`` fits the bank-update schedule to the stream's length (the fields in
    ``keep`` were chosen by the user and stay); ``negative_space`` scores with a saved space
    (``mode``/``lam`` override its scoring); ``explanations`` images are explained per set;
    more than ``max_failures`` of a stream's MLLM requests lost stops the run.
    """

    schedule: str = "default"
    keep: frozenset[str] = frozenset()
    negative_space: Path | None = None
    mode: str | None = None
    lam: float | None = None
    explanations: int = 100
    max_failures: float = 0.1


@with_config_repr
@dataclass(frozen=True)
class EvalConfig:
    """One evaluation: a method with its config, the stream protocol and the negatives' source.

    ``params`` is the method's config (:class:`~negspace.detectors.mcm.MCMConfig`,
    :class:`~negspace.detectors.neglabel.NegLabelConfig`, ...); ``None`` means the paper's
    defaults. ``seed`` shuffles the test streams (the methods' own seeds are in ``params``).
    """

    method: str
    params: Any = None
    stream: str = "per-set"
    batch_size: int = 256
    seed: int = 0
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    tanl_corpus: str = DEFAULT_CORPUS
    scoring_backend: str = "numpy"
    id_shots: Path | None = None  # few-shot ID images (InterNeg): a folder of class folders or a path<TAB>class list
    shots: int = 16  # ID images per class drawn from id_shots (with `seed`)
    ants: ANTSRunConfig = field(default_factory=ANTSRunConfig)

    def __post_init__(self) -> None:
        if self.stream not in STREAM_MODES:
            raise ValueError(f"stream must be one of {', '.join(STREAM_MODES)}, got {self.stream!r}")
        if self.scoring_backend not in BACKENDS:
            raise ValueError(f"scoring_backend must be one of {', '.join(BACKENDS)}, got {self.scoring_backend!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

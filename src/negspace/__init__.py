"""negspace: zero-shot out-of-distribution detection with vision-language models.

Nine methods of the negative-label family: MCM, NegLabel, CSP, NegRefine, InterNeg, TINS, ANTS,
TANL and AdaNeg (one class each, with its config: ``NegLabel``/``NegLabelConfig``, ...).

Scores are **higher for in-distribution** samples. The feature-level API needs no model::

    from negspace import NegLabel, testing

    world = testing.make_world()
    labels, negatives = world.negatives(1000)
    det = NegLabel.from_features(world.id_text_features, negatives, groups=10)
    scores = det.score_features(world.far_ood_features)

With a CLIP model (``load_encoder``), detectors are built from class names and score images.
"""

__version__ = "0.2.0"  # the one place the version is written (pyproject.toml reads it)

# Every public name is imported on first use: `import negspace` (and so `negspace --help`) costs
# milliseconds, and torch, open_clip, scikit-learn load only when a user reaches for them.
_LAZY = {
    "load_class_names": "negspace.classnames",
    "MiningConfig": "negspace.corpus.mining",
    "mine_negative_labels": "negspace.corpus.mining",
    "load_wordnet_corpus": "negspace.corpus.wordnet",
    "AdaNeg": "negspace.detectors.adaneg",
    "ANTS": "negspace.detectors.ants",
    "ANTSConfig": "negspace.detectors.ants",
    "MCM": "negspace.detectors.mcm",
    "NegLabel": "negspace.detectors.neglabel",
    "CSP": "negspace.detectors.csp",
    "CSPConfig": "negspace.detectors.csp",
    "NegRefine": "negspace.detectors.negrefine",
    "NegRefineConfig": "negspace.detectors.negrefine",
    "InterNeg": "negspace.detectors.interneg",
    "InterNegConfig": "negspace.detectors.interneg",
    "TINS": "negspace.detectors.tins",
    "TINSConfig": "negspace.detectors.tins",
    "load_detector": "negspace.methods",
    "METHODS": "negspace.methods",
    "MCMConfig": "negspace.detectors.mcm",
    "NegLabelConfig": "negspace.detectors.neglabel",
    "TANLConfig": "negspace.detectors.tanl",
    "AdaNegConfig": "negspace.detectors.adaneg",
    "ANTSState": "negspace.detectors.ants",
    # the run API
    "evaluate": "negspace.runs",
    **dict.fromkeys(
        ("EvalConfig", "ModelConfig", "MLLMConfig", "NegativesConfig", "ANTSRunConfig"), "negspace.runconfig"
    ),
    "BenchConfig": "negspace.bench.runner",
    "run_suite": "negspace.bench.runner",
    **dict.fromkeys(
        ("ScoreConfig", "CollectionConfig", "score_collection", "embed_collection"), "negspace.collections_api"
    ),
    "TANL": "negspace.detectors.tanl",
    "NegspaceError": "negspace.errors",
    **dict.fromkeys(
        ("StreamingOODMetrics", "aupr_in", "aupr_out", "auroc", "compute_all", "fpr95", "fpr95_ood"), "negspace.metrics"
    ),
    "grouped_id_mass": "negspace.scoring",
    "id_mass": "negspace.scoring",
    "ClipEncoder": "negspace.encoders",
    "load_encoder": "negspace.encoders",
    "load_mllm": "negspace.mllm",
    "Client": "negspace.serve.client",  # pip install 'negspace[serve]'
}
_SUBMODULES = ("serve",)  # negspace.serve without an import of its own


def __getattr__(name: str) -> object:
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"negspace.{name}")
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # found once, then an ordinary attribute
        return value
    raise AttributeError(f"module 'negspace' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__all__ = [
    "ANTS",
    "CSP",
    "MCM",
    "METHODS",
    "TANL",
    "TINS",
    "ANTSConfig",
    "ANTSRunConfig",
    "ANTSState",
    "AdaNeg",
    "AdaNegConfig",
    "BenchConfig",
    "CSPConfig",
    "Client",
    "ClipEncoder",
    "CollectionConfig",
    "EvalConfig",
    "InterNeg",
    "InterNegConfig",
    "MCMConfig",
    "MLLMConfig",
    "MiningConfig",
    "ModelConfig",
    "NegLabel",
    "NegLabelConfig",
    "NegRefine",
    "NegRefineConfig",
    "NegativesConfig",
    "NegspaceError",
    "ScoreConfig",
    "StreamingOODMetrics",
    "TANLConfig",
    "TINSConfig",
    "aupr_in",
    "aupr_out",
    "auroc",
    "compute_all",
    "embed_collection",
    "evaluate",
    "fpr95",
    "fpr95_ood",
    "grouped_id_mass",
    "id_mass",
    "load_class_names",
    "load_detector",
    "load_encoder",
    "load_mllm",
    "load_wordnet_corpus",
    "mine_negative_labels",
    "run_suite",
    "score_collection",
]

"""NegRefine: cleaning, the LLM filter, the initial selection and the multi-matching score against
a literal restatement of the authors' code (ah-ansari/NegRefine: create_negs.py, neg_filter.py,
clip_ood.py), the filter through a real local HTTP chat server, and NegRefine as every other
detector (eval, --negatives, save/load, score, bench)."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
import torch

from chat_server import chat_server
from image_sets import write_sets
from negspace.cli import main
from negspace.corpus.csp import label_ratios, lowest
from negspace.corpus.negrefine import clean_labels, filter_labels, is_yes
from negspace.detectors.neglabel import NegLabel
from negspace.detectors.negrefine import NegRefine, NegRefineConfig
from negspace.methods import load_detector
from negspace.testing import make_world
from numerics import assert_same_selection, assert_scores_close, cosine_error, score_bound
from test_csp import ratio_key

pytestmark = pytest.mark.numerics


# -- the authors' code, restated literally ----------------------------------------------------------------


def authors_clean_words(words):
    """neg_filter._clean_words: letters, '_', '-' and spaces kept; longer than 2; a set."""
    cleaned = ["".join(c for c in w if c.isalpha() or c in {"_", "-", " "}) for w in words]
    return list({w for w in cleaned if len(w) > 2})


def authors_filter(labels, nearest, llm):
    """neg_filter._llm_filter, one label at a time: the proper-noun question, then the nearest ID
    names in order (equal: dropped; a subcategory: dropped), the first yes ends it."""
    kept, asked = [], []
    for i, neg_label in enumerate(labels):
        prompt = (
            f"Is '{neg_label}' a proper noun, like the name of a city, country, mountain, river, or any unique place "
            "or entity?"
        )
        asked.append(prompt)
        if llm(prompt).lower().startswith("yes"):
            continue
        flag = False
        for name in nearest[i]:
            if neg_label == name:
                flag = True
                break
            prompt = f"Is '{neg_label}' a subcatgeory of '{name}'?"
            asked.append(prompt)
            if llm(prompt).lower().startswith("yes"):
                flag = True
                break
        if not flag:
            kept.append(neg_label)
    return kept, asked


def authors_score(image, id_features, neg_features, class_names, neg_labels, pair_feature):
    """clip_ood.py, one image at a time: NegLabel's grouped part (the last N mod 100 dropped,
    randperm with seed 0) plus 2 x the best exp/(exp + exp) over the top-5 x top-5 pairs."""
    scores = []
    for v in torch.from_numpy(image):
        pos_sim = 100 * (v @ torch.from_numpy(id_features).T)
        neg_sim = 100 * (v @ torch.from_numpy(neg_features).T)
        neg = neg_sim[: len(neg_sim) - len(neg_sim) % 100]
        torch.manual_seed(0)
        idx = torch.randperm(len(neg))
        groups = neg[idx].reshape(100, -1)
        neglabel = np.mean(
            [torch.softmax(torch.cat([pos_sim, g]).double(), 0)[: len(pos_sim)].sum().item() for g in groups]
        )
        top_p = torch.topk(pos_sim, 5).indices.tolist()
        top_n = torch.topk(neg_sim, 5).indices.tolist()
        best = 0.0
        for p in top_p:
            for n in top_n:
                t = torch.from_numpy(pair_feature(f"{class_names[p]} and {neg_labels[n]}"))
                sim = (100 * (v @ t)).double()
                ss = torch.exp(sim) / (torch.exp(sim) + torch.exp(neg_sim[n].double()))
                best = max(best, ss.item())
        scores.append((neglabel, best))
    return np.array(scores).T  # the NegLabel part, the multi-matching part


# -- cleaning and the filter ------------------------------------------------------------------------


def test_cleaning_is_the_authors_rule_in_first_seen_order():
    words = [
        "bird's nest fern",
        "biosafety level 1",
        "biosafety level 2",
        "ox",
        "a-ok area",
        "café crème",
        "x1y",
        "cold_war",
        "bird's nest fern",
    ]
    cleaned = clean_labels(words)
    # the same labels, spaces collapsed (the authors' "biosafety level " has the same features)
    assert set(cleaned) == {" ".join(w.split()) for w in authors_clean_words(words)}
    assert cleaned == ["birds nest fern", "biosafety level", "a-ok area", "café crème", "cold_war"]


def _scripted_llm(prompt: str) -> str:
    if "proper noun" in prompt:
        return "Yes, it is." if "paris" in prompt else "No."
    label, name = prompt.split("'")[1], prompt.split("'")[3]
    return "yes" if label.split()[0] == name.split()[-1] else "No, it is not."


def test_filter_asks_what_the_authors_loop_asks_and_keeps_the_same():
    labels = ["paris street", "square tile", "stone wall", "red square", "lively area", "tile roof"]
    nearest = [
        ["red square", "tile"],
        ["blue square", "red square"],
        ["wall", "stone"],
        ["red square", "x"],
        ["area", "blue square"],
        ["roof", "tile"],
    ]
    asked = []

    def ask(prompts):
        asked.extend(prompts)
        return [_scripted_llm(p) for p in prompts]

    result = filter_labels(labels, nearest, ask)
    want_kept, want_asked = authors_filter(labels, nearest, _scripted_llm)
    assert result.kept == want_kept and sorted(asked) == sorted(want_asked)
    assert result.dropped == {
        "paris street": "proper noun",
        "square tile": "subcategory of blue square",
        "red square": "same as red square",
        "stone wall": "subcategory of stone",
        "tile roof": "subcategory of tile",
    }
    # negspace strips a reply before reading it (the authors' " Yes" would be a no)
    assert is_yes("  Yes.") and not is_yes("No") and not is_yes(None)


def test_a_filter_whose_requests_fail_is_an_error_not_a_result():
    from negspace.errors import NegspaceError

    with pytest.raises(NegspaceError, match="lost 6 of its 6 requests"):
        filter_labels(["a b c", "d e f"], [["x", "y"], ["x", "y"]], lambda prompts: [None] * len(prompts))


# -- selection and score against the restatement -------------------------------------------------------


@pytest.fixture(scope="module")
def world():
    return make_world(dim=64, n_classes=20, n_corpus=1500, seed=5)


def test_initial_selection_is_the_largest_cosine_rule(world):
    labels = world.corpus_features[:900]
    tmp = torch.from_numpy(labels) @ torch.from_numpy(world.id_text_features).T
    sim = torch.quantile(tmp, q=1, dim=-1)
    sim[torch.max(tmp, dim=1)[0] > 0.95] = 1.0
    want = torch.argsort(sim)[: int(len(sim) * 0.15)].numpy()
    got = lowest(label_ratios(labels, world.id_text_features, quantile=1.0, saturate_above=0.95), 0.15)
    # NumPy's float32 cosines against torch's: the same picks in the same order but for near-ties
    key, free = ratio_key(labels, world.id_text_features, 1.0, 0.95)
    assert_same_selection(got, want, key, bound=cosine_error(world.dim), free=free)


def _pair_world(world, n_bank):
    rng = np.random.default_rng(0)
    class_names = [f"class{i}" for i in range(len(world.id_text_features))]
    neg_labels = [f"neg{j}" for j in range(n_bank)]
    by_name = dict(
        zip(
            class_names + neg_labels,
            np.concatenate([world.id_text_features, world.corpus_features[:n_bank]]),
            strict=False,
        )
    )
    noise = {}

    def pair_feature(text: str) -> np.ndarray:  # a fixed feature per pair text, near both its labels
        p, n = text.split(" and ")
        if text not in noise:
            noise[text] = rng.standard_normal(world.dim).astype(np.float32) * 0.05
        feature = by_name[p] + by_name[n] + noise[text]
        return (feature / np.linalg.norm(feature)).astype(np.float32)

    return class_names, neg_labels, pair_feature


@pytest.mark.parametrize("n_bank", [1000, 1063])  # 1063: 63 labels outside the groups, still matched
def test_score_matches_the_authors_code(world, n_bank):
    class_names, neg_labels, pair_feature = _pair_world(world, n_bank)
    bank = world.corpus_features[:n_bank]
    images = np.concatenate([world.id_image_features[:15], world.far_ood_features[:15], world.near_ood_features[:15]])
    want_neglabel, want_matching = authors_score(
        images, world.id_text_features, bank, class_names, neg_labels, pair_feature
    )
    calls = []

    def encode(texts):
        calls.append(len(texts))
        return np.stack([pair_feature(t) for t in texts])

    detector = NegRefine.from_features(
        world.id_text_features, bank, class_names=class_names, neg_labels=neg_labels, pair_encoder=encode
    )
    got = detector.score_features(images)
    neglabel = NegLabel.score_features(detector, images)
    assert_scores_close(neglabel, want_neglabel, dim=world.dim)
    # sigma moves by at most 1/4 of its logit's error, 2 EPS_COS / tau
    matching_bound = 0.25 * 2 * cosine_error(world.dim) / 0.01
    np.testing.assert_allclose((got - neglabel) / 2, want_matching, rtol=0, atol=matching_bound)
    # each pair is encoded once: the second pass is look-ups only
    encoded = sum(calls)
    np.testing.assert_array_equal(detector.score_features(images), got)
    assert sum(calls) == encoded and encoded <= 25 * len(images)
    # a bounded pair table gives the same scores
    small = NegRefine.from_features(
        world.id_text_features, bank, class_names=class_names, neg_labels=neg_labels, pair_encoder=encode, pair_cache=30
    )
    np.testing.assert_allclose(small.score_features(images), got, rtol=0, atol=1e-12)
    assert len(small._pairs) <= 30
    on_torch = NegRefine.from_features(
        world.id_text_features,
        bank,
        class_names=class_names,
        neg_labels=neg_labels,
        pair_encoder=encode,
        backend="torch",
        device="cpu",
    ).score_features(images)
    np.testing.assert_allclose(
        on_torch, got, rtol=0, atol=score_bound(got, tau=0.01, dim=world.dim).max() + 2 * matching_bound
    )


def test_the_sigmoid_stays_finite_where_the_authors_overflows(world):
    class_names, neg_labels, pair_feature = _pair_world(world, 1000)
    image = world.corpus_features[:1].copy()  # matches a negative exactly: large logits
    detector = NegRefine.from_features(
        world.id_text_features,
        world.corpus_features[:1000],
        class_names=class_names,
        neg_labels=neg_labels,
        pair_encoder=lambda t: np.stack([pair_feature(x) for x in t]),
        tau=1e-4,
    )
    assert np.isfinite(detector.score_features(image)).all()


def test_pairs_are_encoded_with_the_eight_noun_templates_and_an_empty_batch_scores_to_nothing(world):
    from negspace.templates import CSP_NOUN_TEMPLATES

    class RecordingEncoder:
        calls: ClassVar[list] = []

        def encode_texts_averaged(self, texts, templates, progress=None):
            self.calls.append((list(texts), tuple(templates)))
            rng = np.random.default_rng(len(texts))
            features = rng.standard_normal((len(texts), world.dim))
            return (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)

    class_names = [f"class{i}" for i in range(len(world.id_text_features))]
    detector = NegRefine.from_features(
        world.id_text_features,
        world.corpus_features[:200],
        groups=10,
        class_names=class_names,
        neg_labels=[f"neg{j}" for j in range(200)],
    )
    detector.encoder = RecordingEncoder()
    detector.score_features(world.id_image_features[:3])
    texts, templates = RecordingEncoder.calls[0]
    assert templates == CSP_NOUN_TEMPLATES and all(" and neg" in t and t.startswith("class") for t in texts)
    assert detector.score_features(np.zeros((0, world.dim), np.float32)).shape == (0,)


def test_config_defaults():
    config = NegRefineConfig()
    assert (
        config.match_weight,
        config.top_id,
        config.top_negatives,
        config.groups,
        config.fraction,
        config.nearest,
    ) == (2.0, 5, 5, 100, 0.15, 10)
    assert config.selection().quantile == 1.0 and config.selection().remove_id_nouns
    with pytest.raises(ValueError, match="top_id"):
        NegRefineConfig(top_id=0)


# -- the whole method on the tiny model, with a real HTTP chat server as the LLM ---------------------------


@pytest.fixture
def llm_server():
    """A real OpenAI-compatible chat server answering NegRefine's two questions."""
    prompts = []

    def answer(payload):
        assert payload["messages"][0] == {
            "role": "system",
            "content": "You are a helpful assistant. Answering only Yes/No.",
        }
        prompt = payload["messages"][-1]["content"]
        prompts.append(prompt)
        label = prompt.split("'")[1]
        if "proper noun" in prompt:
            return "Yes." if label.startswith("place") else "No."
        return "yes, it is" if label.endswith("z") else "No"

    with chat_server("tiny-llm", answer) as server:
        yield server, prompts


def _model_args(model) -> list[str]:
    return ["--model", model.spec, "--weights", str(model.weights), "--device", "cpu", "-q"]


def _word(prefix: str, i: int) -> str:
    """A distinct label of letters only (NegRefine's cleaning drops digits): thingbac, thingbad..."""
    return prefix + "".join(chr(97 + (i // 26**k) % 26) for k in (2, 1, 0))


def test_eval_negrefine_filters_with_an_http_llm_once_and_saves_a_detector(tmp_path, tiny_openclip, llm_server, capsys):
    server, prompts = llm_server
    images = write_sets(tmp_path)
    corpus = tmp_path / "pool.txt"
    corpus.write_text(
        "\n".join(
            [_word("thing", i) for i in range(300)]
            + [_word("place", i) for i in range(40)]
            + ["red square", "o'clock item"]
            + [_word("adj", i) + "\tadj" for i in range(80)]
        ),
        encoding="utf-8",
    )
    args = [
        "eval",
        "--method",
        "negrefine",
        "--classes",
        str(images["classes"]),
        "--id",
        str(images["id"]),
        "--ood",
        f"noise={images['ood']}",
        "--corpus",
        str(corpus),
        "--groups",
        "10",
        "--llm",
        server.spec,
        "--cache-dir",
        str(tmp_path / "cache"),
        *_model_args(tiny_openclip),
    ]
    assert main([*args, "--out", str(tmp_path / "run"), "--save-detector", str(tmp_path / "det")]) == 0
    notes = json.loads((tmp_path / "run" / "metrics.json").read_text())["negrefine"]
    filtered = notes["llm_filter"]
    assert filtered["requests"] == len(prompts) > 0 and filtered["failed_requests"] == 0
    # the endpoint and the model are recorded; a text-only filter records no image size
    assert filtered["llm"] == {"backend": "openai", "endpoint": server.url_for("/v1"), "model": server.model}
    detector = load_detector(tmp_path / "det")
    labels = detector.neg_labels
    assert not any(label.startswith("place") for label in labels)  # proper nouns, by the LLM
    assert not any(label.endswith("z") for label in labels)  # subcategories (of the nearest ID name)
    assert "red square" not in labels  # an ID name: out of the nouns before any question
    label_file = notes["filtered_list"]
    # a second run reads the filtered list: no question is asked again
    asked = len(prompts)
    assert main([*args, "--out", str(tmp_path / "again")]) == 0
    assert len(prompts) == asked
    # --negatives takes the saved list, and the saved detector scores with the model's text tower
    assert main([*args, "--out", str(tmp_path / "file"), "--negatives", label_file]) == 0

    def scores(run):
        return {r.split(",")[3]: r.split(",")[4] for r in (tmp_path / run / "scores.csv").read_text().splitlines()[1:]}

    assert scores("file") == scores("again") == scores("run")  # the saved list is the bank that was scored
    out = tmp_path / "scored"
    assert main(["score", str(images["ood"]), "--detector", str(tmp_path / "det"), "--out", str(out), "-q"]) == 0
    assert list(out.glob("part-*.parquet"))


def test_eval_negrefine_without_an_llm_says_the_filter_was_skipped(tmp_path, tiny_openclip, capsys):
    images = write_sets(tmp_path)
    corpus = tmp_path / "pool.txt"
    corpus.write_text(
        "\n".join([_word("thing", i) for i in range(200)] + [_word("adj", i) + "\tadj" for i in range(60)]),
        encoding="utf-8",
    )
    out = tmp_path / "run"
    assert (
        main(
            [
                "eval",
                "--method",
                "negrefine",
                "--classes",
                str(images["classes"]),
                "--id",
                str(images["id"]),
                "--ood",
                f"noise={images['ood']}",
                "--corpus",
                str(corpus),
                "--groups",
                "10",
                "--out",
                str(out),
                "--model",
                tiny_openclip.spec,
                "--weights",
                str(tiny_openclip.weights),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "its LLM filter was skipped" in capsys.readouterr().err
    notes = json.loads((out / "metrics.json").read_text())["negrefine"]
    assert notes["llm_filter"].startswith("skipped") and notes["cleaned_labels"] == int(200 * 0.15) + int(60 * 0.15)


def test_bench_negrefine_on_the_miniature_suite(tmp_path, tiny_openclip):
    from negspace.bench import BenchConfig, run_suite
    from negspace.bench.miniature import write_miniature
    from negspace.bench.suites import load_suite
    from negspace.runconfig import ModelConfig

    data = tmp_path / "data"
    write_miniature(load_suite("imagenet"), data, per_set=2)
    corpus = tmp_path / "pool.txt"
    corpus.write_text(
        "\n".join([_word("object", i) for i in range(300)] + [_word("adj", i) + "\tadj" for i in range(100)]),
        encoding="utf-8",
    )
    config = BenchConfig(
        "imagenet",
        methods=("negrefine",),
        check_counts=False,
        batch_size=4,
        params={"negrefine": NegRefineConfig(pool=str(corpus), groups=10)},
    )
    model = ModelConfig(tiny_openclip.spec, tiny_openclip.weights, device="cpu", progress=False)
    result = run_suite(config, data_root=data, model=model, out=tmp_path / "out")
    assert any("NegRefine ran without its LLM filter" in note for note in result.notes)
    rows = [r for r in (tmp_path / "out" / "results.csv").read_text().splitlines() if ",NegRefine," in r]
    assert rows and any(",Average,NegRefine,FPR95," in r and ",21.17" in r for r in rows)

"""A corpus of one's own (``--corpus FILE``): reading it, mining from precomputed features, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from negspace import testing
from negspace.cli import main
from negspace.corpus.custom import load_corpus, read_corpus_file
from negspace.corpus.mining import MiningConfig, mine_from_features, select_negatives


def test_corpus_file_parts_comments_and_repeats(tmp_path):
    path = tmp_path / "vocabulary.txt"
    path.write_text(
        "# industrial defects\nscratch\ndent\tnoun\nrusty\tadj\n\nscratch\n  hair  line \tnoun\n", encoding="utf-8"
    )
    corpus = read_corpus_file(path)
    assert corpus.nouns == ("scratch", "dent", "hair line") and corpus.adjectives == ("rusty",)
    assert load_corpus(str(path), exclude=["Dent"]).nouns == ("scratch", "hair line")


@pytest.mark.parametrize(
    ("text", "message"), [("crack\tverb\n", "line 1: the part 'verb'"), ("# nothing\n\n", "holds no word")]
)
def test_bad_corpus_file_is_one_sentence(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_corpus_file(path)


def test_mining_from_precomputed_features_is_the_mining_rule():
    world = testing.make_world(n_corpus=400, seed=2)
    words = [f"w{i}" for i in range(len(world.corpus_features))]
    from negspace.corpus.wordnet import Corpus

    corpus = Corpus(nouns=tuple(words[:300]), adjectives=tuple(words[300:]))
    config = MiningConfig(num_negatives=100)
    mined = mine_from_features(
        corpus, world.corpus_features[:300], world.corpus_features[300:], world.id_text_features, config
    )
    nouns, adjectives = select_negatives(
        world.corpus_features[:300], world.corpus_features[300:], world.id_text_features, config
    )
    assert mined.labels == [words[i] for i in nouns] + [words[300 + i] for i in adjectives]
    n_adjectives = round(100 * len(corpus.adjectives) / len(words))  # the proportional split
    assert (mined.n_nouns, mined.n_adjectives) == (100 - n_adjectives, n_adjectives)
    np.testing.assert_array_equal(mined.features[: mined.n_nouns], world.corpus_features[nouns])
    with pytest.raises(ValueError, match="feature rows"):
        mine_from_features(corpus, world.corpus_features[:10], world.corpus_features[300:], world.id_text_features)


def test_eval_mines_negatives_from_a_corpus_file(tmp_path, tiny_openclip, capsys):
    from PIL import Image

    vocabulary = tmp_path / "vocabulary.txt"
    words = [f"gizmo {i}" for i in range(40)] + [f"shade {i}\tadj" for i in range(10)] + ["red square"]
    vocabulary.write_text("\n".join(words) + "\n", encoding="utf-8")
    for folder, colour in (("id", 200), ("ood", 20)):
        (tmp_path / folder).mkdir()
        for k in range(3):
            Image.fromarray(np.full((24, 24, 3), colour + 10 * k, np.uint8)).save(tmp_path / folder / f"{k}.png")
    classes = tmp_path / "classes.txt"
    classes.write_text("red square\ngreen square\n", encoding="utf-8")
    model = ["--model", tiny_openclip.spec, "--weights", str(tiny_openclip.weights), "--device", "cpu", "-q"]
    common = ["eval", "--classes", str(classes), "--id", str(tmp_path / "id"), "--ood", f"o={tmp_path / 'ood'}", *model]
    assert (
        main(
            [
                *common,
                "--method",
                "neglabel",
                "--corpus",
                str(vocabulary),
                "--num-negatives",
                "20",
                "--groups",
                "4",
                "--out",
                str(tmp_path / "nl"),
            ]
        )
        == 0
    )
    params = json.loads((tmp_path / "nl" / "metrics.json").read_text())["params"]
    assert params["n_negatives"] == 20  # 16 nouns + 4 adjectives of the 50 words (the ID name is removed)
    assert (
        main(
            [
                *common,
                "--method",
                "tanl",
                "--tanl-corpus",
                str(vocabulary),
                "--tanl-beta",
                "10",
                "--out",
                str(tmp_path / "tanl"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "tanl" / "metrics.json").read_text())["params"]["n_pool"] == 50
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:  # refused as the options are parsed
        main([*common, "--method", "neglabel", "--corpus", str(tmp_path / "missing.txt")])
    assert stopped.value.code == 2
    assert "--corpus: expected neglabel or all or a corpus file" in capsys.readouterr().err

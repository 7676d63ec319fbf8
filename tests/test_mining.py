"""NegLabel mining rule on features, and the label file format."""

import numpy as np
import pytest

from negspace import testing
from negspace.corpus.labelfile import read_label_file, write_label_file
from negspace.corpus.mining import MiningConfig, percentile_similarity, select_negatives, split_counts
from negspace.errors import NegspaceError


def test_percentile_similarity_matches_brute_force_and_torch_quantile():
    import torch

    rng = np.random.default_rng(0)
    cands, ids = rng.normal(size=(50, 8)), rng.normal(size=(13, 8))
    brute = [np.percentile(c @ ids.T, 95) for c in cands]
    np.testing.assert_allclose(percentile_similarity(cands, ids, 95, chunk_size=7), brute)
    quantile = torch.quantile(torch.from_numpy(cands @ ids.T), 0.95, dim=1).numpy()
    np.testing.assert_allclose(percentile_similarity(cands, ids), quantile)


def test_proportional_split_and_per_part_split():
    assert split_counts(58_514, 12_280, MiningConfig()) == (8_265, 1_735)
    assert split_counts(58_514, 12_280, MiningConfig(split="per_part")) == (8_777, 1_842)
    assert split_counts(30, 10, MiningConfig(num_negatives=100)) == (30, 10)  # all, with a warning


def test_mining_keeps_the_farthest_words_and_rejects_synonyms():
    world = testing.make_world(seed=0, n_corpus=600)
    nouns, adjectives = world.corpus_features[:400], world.corpus_features[400:]
    noun_idx, adj_idx = select_negatives(nouns, adjectives, world.id_text_features, MiningConfig(num_negatives=100))
    assert (len(noun_idx), len(adj_idx)) == (61, 39)  # 100 split as 400 : 260 (incl. 60 synonyms)
    d_nouns = np.percentile(nouns @ world.id_text_features.T, 95, axis=1)
    assert np.all(np.diff(d_nouns[noun_idx]) >= 0)  # farthest first
    assert d_nouns[noun_idx].max() <= np.sort(d_nouns)[len(noun_idx) - 1]
    # The planted synonyms (the last 60 corpus rows, in the adjective part here) are never kept.
    assert not np.any(adj_idx >= 260 - 60)


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="split"):
        MiningConfig(split="half")
    with pytest.raises(ValueError, match="num_negatives"):
        MiningConfig(num_negatives=0)


def test_label_file_round_trip(tmp_path):
    path = tmp_path / "labels.txt"
    write_label_file(path, ["wind tunnel", "quark"], ["gilded"], comment="model=x")
    assert read_label_file(path) == (["wind tunnel", "quark"], ["gilded"])
    plain = tmp_path / "plain.txt"
    plain.write_text("# my list\nvolcano\n\nseashore\n", encoding="utf-8")
    assert read_label_file(plain) == (["volcano", "seashore"], [])
    plain.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(NegspaceError, match="no labels"):
        read_label_file(plain)

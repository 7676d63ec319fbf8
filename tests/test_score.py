"""``negspace score``: a saved detector over a collection, one Parquet row per image, resumable."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from fixtures_models import TINY_DIM
from negspace import load_detector
from negspace.cli import main
from negspace.encoders import load_encoder
from numerics import FEATURE_ERROR, assert_features_close, assert_scores_close
from serve_support import model_args as _model_args
from serve_support import save_detector
from serve_support import write_images as _images


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_openclip):
    """A NegLabel detector saved by `negspace eval --save-detector` (``det-neglabel``), with its ID
    images (``id``)."""
    root = tmp_path_factory.mktemp("score")
    save_detector(root, tiny_openclip)
    return root


def _table(folder: Path):
    return ds.dataset(folder, format="parquet").to_table().to_pylist()


@pytest.mark.numerics
def test_score_writes_one_row_per_image_with_its_score_flag_and_labels(tmp_path, saved, tiny_openclip):
    collection = _images(tmp_path / "collection", 9, seed=5)
    (tmp_path / "collection" / "broken.jpg").write_bytes(b"not a jpeg")
    listed = tmp_path / "listed.csv"
    with listed.open("w", newline="") as handle:  # a table of paths, repeating two of the folder's
        csv.writer(handle).writerows([["file"], *[[p.name] for p in collection[:2]]])
    (tmp_path / "extra").mkdir()
    extra = _images(tmp_path / "extra" / "more", 2, seed=6)
    # the 2 images of extra/, then two of the folder's again: absolute, and through ".."
    (tmp_path / "list.txt").write_text(
        "\n".join(
            [*(f"extra/more/{p.name}" for p in extra), str(collection[2]), f"extra/../collection/{collection[3].name}"]
        )
        + "\n"
    )
    for path in collection[:2]:
        (tmp_path / path.name).symlink_to(path)
    out = tmp_path / "scores"
    code = main(
        [
            "score",
            str(tmp_path / "collection"),
            f"{listed}:file",
            str(tmp_path / "list.txt"),
            "--detector",
            str(saved / "det-neglabel"),
            "--out",
            str(out),
            "--chunk-size",
            "4",
            *_model_args(tiny_openclip),
        ]
    )
    assert code == 0
    rows = _table(out)
    # the folder's 9 readable images and the 2 of extra/; the table's two (symlinks) and list.txt's
    # two other spellings name files of the folder: each file is one row, under the folder's path
    assert len(rows) == 9 + 2 and len({r["path"] for r in rows}) == len(rows)
    assert {r["path"] for r in rows} == {str(p) for p in collection + extra}
    assert set(rows[0]) == {"path", "sha256", "score", "ood", "id_class", "top_negative"}
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["duplicate_paths"] == 4 and summary["images"] == 9 + 1 + 2
    assert summary["skipped_unreadable"] == 1 and "broken.jpg" in (out / "_skipped.csv").read_text()
    provenance = json.loads((saved / "det-neglabel" / "provenance.json").read_text())
    assert summary["threshold"] == provenance["threshold_95_id_recall"]
    # the scores are the saved detector's, the flags its threshold's, the labels its banks'
    encoder = load_encoder(tiny_openclip.spec, weights=tiny_openclip.weights, device="cpu")
    detector = load_detector(saved / "det-neglabel")
    paths = [Path(r["path"]) for r in rows]
    features = encoder.encode_image_files(paths, progress=False).features
    # images encoded and scored in batches of other sizes: equal within the float32 bound
    assert_scores_close(
        [r["score"] for r in rows], detector.score_features(features), dim=TINY_DIM, feature_error=FEATURE_ERROR
    )
    assert [r["ood"] for r in rows] == [r["score"] < summary["threshold"] for r in rows]
    nearest_id, nearest_negative = detector.nearest_labels(features)
    assert [r["id_class"] for r in rows] == [detector.class_names[i] for i in nearest_id]
    assert [r["top_negative"] for r in rows] == nearest_negative and all(nearest_negative)


# `negspace ARGS` whose third part written is its last: it then SIGKILLs itself.
_KILLED_AFTER_THREE_PARTS = """
import os, signal, sys
from negspace.cli import main
from negspace.collection import PartWriter
write_table, parts = PartWriter.write_table, []
def write_then_maybe_die(writer, table):
    parts.append(write_table(writer, table))
    if len(parts) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return parts[-1]
PartWriter.write_table = write_then_maybe_die
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.numerics
def test_score_resumes_after_kill_9(tmp_path, saved, tiny_openclip):
    _images(tmp_path / "many", 160, seed=9, size=(64, 80))
    command = [
        sys.executable,
        "-m",
        "negspace.cli",
        "score",
        str(tmp_path / "many"),
        "--detector",
        str(saved / "det-neglabel"),
        "--chunk-size",
        "8",
        "--batch-size",
        "8",
        "--no-cache",
        *_model_args(tiny_openclip),
    ]
    out = tmp_path / "resumed"
    # the run kills itself (SIGKILL) once its third part is in place: midway on any machine's speed
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_THREE_PARTS, *command[3:], "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    written = len(_table(out))
    assert written == 3 * 8, "three parts of 8 rows, then killed"
    again = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"({written:,} already written" in again.stdout
    clean = subprocess.run([*command, "--out", str(tmp_path / "clean")], capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0
    resumed = {r["path"]: r["score"] for r in _table(out)}
    assert len(_table(out)) == 160 == len(resumed)
    clean_scores = {r["path"]: r["score"] for r in _table(tmp_path / "clean")}
    assert resumed.keys() == clean_scores.keys()
    assert_scores_close(
        [resumed[p] for p in clean_scores], list(clean_scores.values()), dim=TINY_DIM, feature_error=FEATURE_ERROR
    )  # the resumed run's chunks are composed otherwise


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "tanl", "--classes", "imagenet"], "learns from the stream; learn it on a sample"),
        (["--method", "mcm"], "--method mcm needs --classes"),
        (["--method", "mcm", "--classes", "imagenet", "--detector", "x"], "Give either --detector DIR"),
    ],
)
def test_score_refuses_what_it_cannot_do_in_one_sentence(tmp_path, extra, message, capsys):
    code = main(["score", str(tmp_path), "--out", str(tmp_path / "out"), *extra])
    assert code == 2 or code is None
    assert message in capsys.readouterr().err


def test_score_without_a_threshold_or_with_a_bad_table_is_one_sentence(tmp_path, tiny_openclip, capsys):
    _images(tmp_path / "imgs", 2, seed=3)
    assert (
        main(
            [
                "score",
                str(tmp_path / "imgs"),
                "--method",
                "mcm",
                "--classes",
                "imagenet",
                "--out",
                str(tmp_path / "o"),
                *_model_args(tiny_openclip),
            ]
        )
        == 2
    )
    assert "No threshold for the OOD flag" in capsys.readouterr().err
    table = tmp_path / "t.csv"
    table.write_text("name\nimgs/img_0000.jpg\n")
    assert (
        main(
            [
                "score",
                str(table),
                "--method",
                "mcm",
                "--classes",
                "imagenet",
                "--threshold",
                "0.5",
                "--out",
                str(tmp_path / "o2"),
                *_model_args(tiny_openclip),
            ]
        )
        == 2
    )
    assert "has no column 'path' (columns: name)" in capsys.readouterr().err
    assert (
        main(
            [
                "score",
                f"{table}:name",
                "--method",
                "mcm",
                "--classes",
                "imagenet",
                "--threshold",
                "0.5",
                "--out",
                str(tmp_path / "o3"),
                *_model_args(tiny_openclip),
            ]
        )
        == 0
    )
    assert len(_table(tmp_path / "o3")) == 1


@pytest.mark.numerics
def test_embed_then_eval_and_score_from_the_features(tmp_path, saved, tiny_openclip, capsys):
    table = tmp_path / "features"
    assert (
        main(
            [
                "embed",
                str(saved / "id"),
                str(saved / "ood"),
                "--out",
                str(table),
                "--chunk-size",
                "5",
                *_model_args(tiny_openclip),
            ]
        )
        == 0
    )
    rows = _table(table)
    assert len(rows) == 12 and set(rows[0]) == {"path", "sha256", "feature"} and len(rows[0]["feature"]) > 0
    encoder = load_encoder(tiny_openclip.spec, weights=tiny_openclip.weights, device="cpu")
    direct = encoder.encode_image_files(sorted((saved / "id").iterdir()), progress=False)
    by_path = {r["path"]: r for r in rows}
    assert_features_close([by_path[str(p)]["feature"] for p in direct.paths], direct.features)
    assert [by_path[str(p)]["sha256"] for p in direct.paths] == direct.hashes
    # a re-run writes nothing new
    assert main(["embed", str(saved / "id"), str(saved / "ood"), "--out", str(table), *_model_args(tiny_openclip)]) == 0
    assert "0 image features written" in capsys.readouterr().out and len(_table(table)) == 12
    # score the table itself (no image is read) and the image folder: the same rows
    from_table, from_images = tmp_path / "from_table", tmp_path / "from_images"
    assert (
        main(
            [
                "score",
                str(table),
                "--detector",
                str(saved / "det-neglabel"),
                "--out",
                str(from_table),
                *_model_args(tiny_openclip),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "score",
                str(saved / "id"),
                str(saved / "ood"),
                "--detector",
                str(saved / "det-neglabel"),
                "--out",
                str(from_images),
                *_model_args(tiny_openclip),
            ]
        )
        == 0
    )
    a = {r["path"]: r["score"] for r in _table(from_table)}
    b = {r["path"]: r["score"] for r in _table(from_images)}
    assert a.keys() == b.keys()
    assert_scores_close([a[p] for p in b], list(b.values()), dim=TINY_DIM, feature_error=FEATURE_ERROR)
    # eval reads a table as a set
    id_table = tmp_path / "id_features"
    assert main(["embed", str(saved / "id"), "--out", str(id_table), *_model_args(tiny_openclip)]) == 0
    classes = saved / "classes.txt"
    assert (
        main(
            [
                "eval",
                "--method",
                "mcm",
                "--classes",
                str(classes),
                "--id",
                str(id_table),
                "--ood",
                f"o={table}",
                "--out",
                str(tmp_path / "ev"),
                *_model_args(tiny_openclip),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["id_set"]["n"] == 6 and metrics["ood"]["o"]["n_ood"] == 12


def test_features_of_another_model_are_refused(tmp_path, saved, tiny_openclip, capsys):
    import pyarrow.parquet as pq

    table = tmp_path / "features"
    assert main(["embed", str(saved / "id"), "--out", str(table), *_model_args(tiny_openclip)]) == 0
    part = next(table.glob("part-*.parquet"))
    data = pq.read_table(part)
    meta = json.loads(data.schema.metadata[b"negspace"])
    pq.write_table(
        data.replace_schema_metadata({b"negspace": json.dumps({**meta, "weights_fingerprint": "sha256:x"})}), part
    )
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--method",
                "mcm",
                "--classes",
                str(saved / "classes.txt"),
                "--id",
                str(saved / "id"),
                "--ood",
                f"o={saved / 'ood'}",
                "--features",
                str(table),
                "--out",
                str(tmp_path / "e"),
                *_model_args(tiny_openclip),
            ]
        )
        == 2
    )
    assert "were made by" in capsys.readouterr().err


@pytest.mark.numerics
def test_features_option_reuses_an_embedded_table_instead_of_encoding(tmp_path, saved, tiny_openclip, monkeypatch):
    from negspace.encoders.base import ClipEncoder

    table = tmp_path / "features"
    assert main(["embed", str(saved / "id"), str(saved / "ood"), "--out", str(table), *_model_args(tiny_openclip)]) == 0
    monkeypatch.setenv("NEGSPACE_CACHE_DIR", str(tmp_path / "fresh-cache"))  # nothing cached but the table
    encoded: list[int] = []
    real = ClipEncoder._encode_misses
    monkeypatch.setattr(
        ClipEncoder,
        "_encode_misses",
        lambda self, files, pending, *a: encoded.append(len(pending)) or real(self, files, pending, *a),
    )
    assert (
        main(
            [
                "eval",
                "--method",
                "mcm",
                "--classes",
                str(saved / "classes.txt"),
                "--id",
                str(saved / "id"),
                "--ood",
                f"o={saved / 'ood'}",
                "--features",
                str(table),
                "--out",
                str(tmp_path / "e"),
                *_model_args(tiny_openclip),
            ]
        )
        == 0
    )
    assert encoded == []  # every image's features came from the table
    without = tmp_path / "e2"
    monkeypatch.setenv("NEGSPACE_CACHE_DIR", str(tmp_path / "other-cache"))
    assert (
        main(
            [
                "eval",
                "--method",
                "mcm",
                "--classes",
                str(saved / "classes.txt"),
                "--id",
                str(saved / "id"),
                "--ood",
                f"o={saved / 'ood'}",
                "--out",
                str(without),
                *_model_args(tiny_openclip),
            ]
        )
        == 0
    )
    assert sum(encoded) == 12

    def scores(folder):
        with (folder / "scores.csv").open() as handle:
            return {(r["set"], r["sample"]): float(r["score"]) for r in csv.DictReader(handle)}

    # the same scores (to the float32 rounding of another batch composition)
    from_table, encoded_here = scores(tmp_path / "e"), scores(without)
    assert from_table.keys() == encoded_here.keys()
    assert_scores_close(
        [from_table[k] for k in encoded_here],
        list(encoded_here.values()),
        tau=1.0,
        dim=TINY_DIM,
        feature_error=FEATURE_ERROR,
    )

"""Collections you can trust (issue 18): `score`, `embed`, feature tables and saved detectors
never lose or mix data, and bad input is one sentence (exit 2), through the real command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixtures_models import save_tiny_openclip
from negspace.cli import main
from test_score import _images, _model_args, _table, saved  # noqa: F401  (the saved-detector fixture)

BUSY = "is being written by another negspace run"


def _strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def _score(*args: str) -> list[str]:
    return ["score", *args]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# -- 1. concurrency and crashes ------------------------------------------------------------------


def test_a_second_run_into_a_folder_being_written_is_refused_and_both_sets_end_up_once(
    tmp_path, saved, tiny_openclip, capsys
):
    import fcntl

    first, second = _images(tmp_path / "a", 5, seed=21), _images(tmp_path / "b", 4, seed=22)
    out = tmp_path / "rows"
    out.mkdir()
    with (out / "_lock").open("a+") as holder:  # another run holds the folder
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert (
            main(
                _score(
                    str(tmp_path / "b"),
                    "--detector",
                    str(saved / "det-neglabel"),
                    "--out",
                    str(out),
                    *_model_args(tiny_openclip),
                )
            )
            == 2
        )
        assert BUSY in _error(capsys)
    for source in ("a", "b"):  # one after the other: the second run's parts never replace the first's
        assert (
            main(
                _score(
                    str(tmp_path / source),
                    "--detector",
                    str(saved / "det-neglabel"),
                    "--out",
                    str(out),
                    *_model_args(tiny_openclip),
                )
            )
            == 0
        )
    paths = [r["path"] for r in _table(out)]
    assert sorted(paths) == sorted(str(p) for p in first + second)


def test_two_score_processes_into_one_folder_keep_every_row_exactly_once(tmp_path, saved, tiny_openclip):
    sets = {name: _images(tmp_path / name, 40, seed=seed, size=(48, 64)) for name, seed in (("a", 31), ("b", 32))}
    out = tmp_path / "rows"
    commands = {
        name: [
            sys.executable,
            "-m",
            "negspace.cli",
            "score",
            str(tmp_path / name),
            "--detector",
            str(saved / "det-neglabel"),
            "--out",
            str(out),
            "--chunk-size",
            "4",
            *_model_args(tiny_openclip),
        ]
        for name in sets
    }
    running = {
        name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, command in commands.items()
    }
    results = {name: (process.wait(timeout=300), process.stderr.read()) for name, process in running.items()}
    for name, (code, err) in results.items():
        assert code == 0 or (code == 2 and BUSY in err), (name, code, err)
        if code == 2:  # refused while the other wrote: run it again now
            again = subprocess.run(commands[name], capture_output=True, text=True, timeout=300)
            assert again.returncode == 0, again.stderr
    paths = [r["path"] for r in _table(out)]
    assert len(paths) == len(set(paths)) == 80
    assert set(paths) == {str(p) for images in sets.values() for p in images}


def test_a_killed_run_leaves_only_whole_parts_and_no_lock(tmp_path, saved, tiny_openclip):
    _images(tmp_path / "many", 120, seed=41, size=(64, 80))
    out = tmp_path / "rows"
    command = [
        sys.executable,
        "-m",
        "negspace.cli",
        "score",
        str(tmp_path / "many"),
        "--detector",
        str(saved / "det-neglabel"),
        "--out",
        str(out),
        "--chunk-size",
        "8",
        *_model_args(tiny_openclip),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)  # the lock died with the process
    assert again.returncode == 0, again.stderr
    paths = [r["path"] for r in _table(out)]
    assert len(paths) == len(set(paths)) == 120


# -- 2. the feature cache holds only what a model made ---------------------------------------------


def _feature_table(path: Path, rows: list[tuple[str, str, np.ndarray]], meta: dict | None = None) -> Path:
    features = np.stack([f for _, _, f in rows]).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), features.shape[1])
    table = pa.table({"path": [p for p, _, _ in rows], "sha256": [h for _, h, _ in rows], "feature": column})
    if meta is not None:
        table = table.replace_schema_metadata({b"negspace": json.dumps(meta).encode()})
    pq.write_table(table, path)
    return path


def test_features_without_model_metadata_never_enter_the_cache(tmp_path, saved, tiny_openclip, capsys):
    import hashlib

    image = _images(tmp_path / "imgs", 1, seed=51)[0]
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    foreign = _feature_table(tmp_path / "foreign.parquet", [(str(image), digest, np.ones(32) / np.sqrt(32))])
    args = _score(
        str(tmp_path / "imgs"),
        "--detector",
        str(saved / "det-neglabel"),
        "--threshold",
        "0.5",
        *_model_args(tiny_openclip),
    )
    assert main([*args, "--out", str(tmp_path / "o1"), "--features", str(foreign)]) == 2
    assert "does not say which model made it" in _error(capsys)
    assert not (tmp_path / "o1").exists()
    # the cache was not touched: the image is encoded afresh, and the cache holds its own features
    assert main([*args, "--out", str(tmp_path / "o2")]) == 0
    from negspace.encoders import load_encoder

    encoder = load_encoder(tiny_openclip.spec, weights=tiny_openclip.weights, device="cpu")
    cached = encoder.store.get_many([encoder.image_key(digest)])
    assert len(cached) == 1 and not np.allclose(next(iter(cached.values())), np.ones(32) / np.sqrt(32), atol=1e-3)


def test_a_feature_table_with_two_features_for_one_image_is_refused_naming_the_hash(
    tmp_path,
    saved,
    tiny_openclip,
    capsys,
):
    rng = np.random.default_rng(0)
    rows = [("a.jpg", "ab" * 32, rng.standard_normal(32)), ("b.jpg", "ab" * 32, rng.standard_normal(32))]
    table = _feature_table(tmp_path / "t.parquet", rows, {"model": "m", "weights_fingerprint": "x", "dim": 32})
    assert (
        main(
            _score(
                str(table),
                "--detector",
                str(saved / "det-neglabel"),
                "--out",
                str(tmp_path / "o"),
                *_model_args(tiny_openclip),
            )
        )
        == 2
    )
    assert "ab" * 32 in _error(capsys)


@pytest.mark.parametrize("case", ["empty", "dimension", "zero-row", "corrupt"])
def test_bad_feature_tables_are_one_sentence(tmp_path, saved, tiny_openclip, capsys, case):
    path = tmp_path / "t.parquet"
    meta = {"model": "m", "weights_fingerprint": "x", "dim": 32}
    if case == "empty":
        column = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(0, np.float32)), 32)
        pq.write_table(
            pa.table({"path": pa.array([], pa.string()), "sha256": pa.array([], pa.string()), "feature": column}), path
        )
    elif case == "dimension":
        _feature_table(path, [("a.jpg", "", np.ones(16))], meta)
    elif case == "zero-row":
        _feature_table(path, [("a.jpg", "", np.zeros(32))], meta)
    else:
        path.write_bytes(b"PAR1 this is not parquet PAR1")
    assert (
        main(
            _score(
                str(path),
                "--detector",
                str(saved / "det-neglabel"),
                "--out",
                str(tmp_path / "o"),
                *_model_args(tiny_openclip),
            )
        )
        == 2
    )
    err = _error(capsys)
    assert str(path) in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # no empty folder left behind


def test_embed_refuses_an_out_of_another_model(tmp_path, tiny_openclip, capsys):
    _images(tmp_path / "imgs", 3, seed=61)
    other = save_tiny_openclip(tmp_path / "other", seed=1)
    assert main(["embed", str(tmp_path / "imgs"), "--out", str(tmp_path / "t"), *_model_args(other)]) == 0
    assert main(["embed", str(tmp_path / "imgs"), "--out", str(tmp_path / "t"), *_model_args(tiny_openclip)]) == 2
    assert "holds features of another model" in _error(capsys)
    assert len(_table(tmp_path / "t")) == 3


# -- 3. numbers are numbers; 4. --save-detector follows --out's rule ---------------------------------


def test_every_json_written_is_strict_json(tmp_path, saved, tiny_openclip):
    assert (
        main(
            _score(
                str(saved / "ood"),
                "--detector",
                str(saved / "det-neglabel"),
                "--out",
                str(tmp_path / "o"),
                *_model_args(tiny_openclip),
            )
        )
        == 0
    )
    for path in [
        tmp_path / "o" / "_summary.json",
        saved / "eval-neglabel" / "metrics.json",
        saved / "det-neglabel" / "provenance.json",
        saved / "det-neglabel" / "detector.json",
    ]:
        assert isinstance(_strict_json(path), dict), path


def test_to_json_never_writes_nan_or_infinity():
    from negspace.jsonio import to_json

    text = to_json({"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": np.int64(3)})
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": 3}


def test_save_detector_follows_the_out_rule(tmp_path, saved, tiny_openclip, capsys):
    args = [
        "eval",
        "--method",
        "mcm",
        "--classes",
        str(saved / "classes.txt"),
        "--id",
        str(saved / "id"),
        "--ood",
        f"o={saved / 'ood'}",
        *_model_args(tiny_openclip),
    ]
    target = tmp_path / "det"
    assert main([*args, "--out", str(tmp_path / "r1"), "--save-detector", str(target)]) == 0
    assert main([*args, "--out", str(tmp_path / "r2"), "--save-detector", str(target)]) == 2
    assert "holds a saved detector already; pass --overwrite" in _error(capsys)
    assert not (tmp_path / "r2").exists()
    (target / "stale.npy").write_bytes(b"x")
    assert main([*args, "--out", str(tmp_path / "r3"), "--save-detector", str(target), "--overwrite"]) == 0
    assert not (target / "stale.npy").exists() and (target / "detector.json").is_file()


# -- 5. Ray never hangs ------------------------------------------------------------------------------


def test_an_unreachable_ray_address_fails_in_bounded_time_before_the_model(tmp_path, saved, capsys):
    _images(tmp_path / "imgs", 2, seed=71)
    assert (
        main(
            _score(
                str(tmp_path / "imgs"),
                "--detector",
                str(saved / "det-neglabel"),
                "--out",
                str(tmp_path / "o"),
                "--engine",
                "ray",
                "--ray-address",
                "127.0.0.1:1",
                "--ray-timeout",
                "3",
                "--model",
                "openclip:NoSuchArch/none",
            )
        )
        == 2
    )  # loading that model would fail otherwise
    err = _error(capsys)
    # the address was probed with --ray-timeout's bound (not handed to ray.init, which waits minutes)
    assert "--ray-address 127.0.0.1:1" in err and "no Ray cluster answers there within 3 s" in err


# -- 6. no traceback: one sentence naming the file or option -----------------------------------------


def test_a_corrupt_parquet_source_is_one_sentence_for_score_and_embed(tmp_path, saved, tiny_openclip, capsys):
    table = tmp_path / "paths.parquet"
    table.write_bytes(b"not parquet at all")
    for command in (_score(str(table), "--detector", str(saved / "det-neglabel")), ["embed", str(table)]):
        assert main([*command, "--out", str(tmp_path / "o"), *_model_args(tiny_openclip)]) == 2
        assert str(table) in _error(capsys)


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_file_names_that_are_not_utf8_are_listed_not_fatal(tmp_path, saved, tiny_openclip):
    folder = tmp_path / "imgs"
    good = _images(folder, 3, seed=81)
    strange = os.fsdecode(bytes(folder) + b"/caf\xe9.jpg")  # Latin-1 bytes: not UTF-8
    shutil.copy(good[0], strange)
    for command in (_score(str(folder), "--detector", str(saved / "det-neglabel")), ["embed", str(folder)]):
        out = tmp_path / command[0]
        for _ in range(2):  # the re-run finishes too, and lists the file once
            assert main([*command, "--out", str(out), *_model_args(tiny_openclip)]) == 0
        assert sorted(r["path"] for r in _table(out)) == sorted(str(p) for p in good)
        skipped = (out / "_skipped.csv").read_text(encoding="utf-8").splitlines()
        assert len(skipped) == 2 and "caf\\xe9.jpg" in skipped[1] and "not valid UTF-8" in skipped[1]


def test_an_out_that_cannot_be_written_is_refused_before_the_model(tmp_path, saved, capsys):
    _images(tmp_path / "imgs", 2, seed=91)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert (
        main(
            _score(
                str(tmp_path / "imgs"),
                "--detector",
                str(saved / "det-neglabel"),
                "--out",
                str(blocker / "sub"),
                "--model",
                "openclip:NoSuchArch/none",
            )
        )
        == 2
    )
    assert "cannot write there" in _error(capsys)


@pytest.mark.parametrize("damage", ["provenance-not-json", "no-arrays", "not-an-object", "newer-parameter"])
def test_a_damaged_saved_detector_is_found_before_the_model_loads(tmp_path, saved, capsys, damage):
    det = tmp_path / "det"
    shutil.copytree(saved / "det-neglabel", det)
    doc = json.loads((det / "detector.json").read_text())
    if damage == "provenance-not-json":
        (det / "provenance.json").write_text("{not json")
    elif damage == "no-arrays":
        del doc["arrays"]
    elif damage == "not-an-object":
        doc = [doc]
    else:
        doc["params"]["from_the_future"] = 1
    if damage != "provenance-not-json":
        (det / "detector.json").write_text(json.dumps(doc))
    _images(tmp_path / "imgs", 2, seed=92)
    assert (
        main(
            _score(
                str(tmp_path / "imgs"),
                "--detector",
                str(det),
                "--out",
                str(tmp_path / "o"),
                "--model",
                "openclip:NoSuchArch/none",
            )
        )
        == 2
    )  # refused before that model is tried
    err = _error(capsys)
    assert str(det) in err and "NoSuchArch" not in err and not (tmp_path / "o").exists()


def test_a_detector_of_another_dimension_fails_in_one_sentence_and_leaves_no_out(tmp_path, tiny_openclip, capsys):
    from negspace import MCM

    rng = np.random.default_rng(0)
    MCM.from_features(rng.standard_normal((3, 16)).astype(np.float32)).save(tmp_path / "det16")  # no provenance
    _images(tmp_path / "imgs", 2, seed=93)
    assert (
        main(
            _score(
                str(tmp_path / "imgs"),
                "--detector",
                str(tmp_path / "det16"),
                "--threshold",
                "0.5",
                "--out",
                str(tmp_path / "o"),
                *_model_args(tiny_openclip),
            )
        )
        == 2
    )
    assert "scores 16-dimensional features" in _error(capsys)
    assert not (tmp_path / "o").exists()


def test_an_empty_threshold_id_set_is_found_before_the_model(tmp_path, saved, capsys):
    (tmp_path / "empty").mkdir()
    _images(tmp_path / "imgs", 2, seed=94)
    assert (
        main(
            _score(
                str(tmp_path / "imgs"),
                "--detector",
                str(saved / "det-neglabel"),
                "--threshold-id",
                str(tmp_path / "empty"),
                "--out",
                str(tmp_path / "o"),
                "--model",
                "openclip:NoSuchArch/none",
            )
        )
        == 2
    )
    err = _error(capsys)
    assert "No image files found" in err and "NoSuchArch" not in err


def test_an_unreadable_data_root_is_one_sentence(tmp_path, capsys):
    assert main(["bench", "--suite", "imagenet", "--data-root", str(tmp_path / "missing")]) == 2
    assert "--data-root" in _error(capsys)


def test_a_resumed_run_summary_still_counts_the_rows_in_the_folder(tmp_path, saved, tiny_openclip):
    _images(tmp_path / "imgs", 4, seed=95)
    args = _score(
        str(tmp_path / "imgs"),
        "--detector",
        str(saved / "det-neglabel"),
        "--out",
        str(tmp_path / "o"),
        *_model_args(tiny_openclip),
    )
    assert main(args) == 0
    first = _strict_json(tmp_path / "o" / "_summary.json")
    assert main(args) == 0  # nothing left to do
    again = _strict_json(tmp_path / "o" / "_summary.json")
    assert again["scored"] == 0 and again["already_written"] == 4
    assert again["rows_in_folder"] == first["rows_in_folder"] == 4
    assert again["flagged_ood_in_folder"] == first["flagged_ood_in_folder"] == first["flagged_ood"]


# -- 7. one output folder holds one detector's rows (issue 27) ----------------------------------------


def _rows_by_path(folder: Path) -> dict[str, dict]:
    return {r["path"]: r for r in _table(folder)}


def test_another_detector_into_the_same_out_is_refused_and_overwrite_starts_afresh(
    tmp_path, saved, tiny_openclip, capsys
):
    images = _images(tmp_path / "imgs", 3, seed=101)
    out = tmp_path / "rows"
    assert (
        main(
            _score(
                str(tmp_path / "imgs"),
                "--detector",
                str(saved / "det-neglabel"),
                "--out",
                str(out),
                *_model_args(tiny_openclip),
            )
        )
        == 0
    )
    before, summary = _rows_by_path(out), (out / "_summary.json").read_text()
    assert len(before) == 3 and all(r["top_negative"] for r in before.values())  # NegLabel names a negative
    (out / "_notes.md").write_text("mine")  # not negspace's (and "_": readers skip it): --overwrite leaves it
    _images(tmp_path / "imgs" / "new", 1, seed=102)  # one more image
    mcm = [
        "--method",
        "mcm",
        "--classes",
        str(saved / "classes.txt"),
        "--threshold",
        "0.5",
        *_model_args(tiny_openclip),
    ]
    capsys.readouterr()
    assert main(_score(str(tmp_path / "imgs"), "--out", str(out), *mcm)) == 2
    err = _error(capsys)
    assert err.count("\n") == 1 and f"--out {out} holds scores of neglabel (detector sha256:" in err
    assert "this run is mcm" in err and "pass --overwrite to start afresh" in err
    assert _rows_by_path(out) == before and (out / "_summary.json").read_text() == summary  # nothing written
    # the same detector resumes: only the new image is scored
    assert (
        main(
            _score(
                str(tmp_path / "imgs"),
                "--detector",
                str(saved / "det-neglabel"),
                "--out",
                str(out),
                *_model_args(tiny_openclip),
            )
        )
        == 0
    )
    assert "1 images scored (3 already written" in capsys.readouterr().out
    assert {p: r for p, r in _rows_by_path(out).items() if p in before} == before
    # --overwrite: every row is MCM's, the same rows a fresh folder gets
    assert main(_score(str(tmp_path / "imgs"), "--out", str(out), "--overwrite", *mcm)) == 0
    fresh = tmp_path / "fresh"
    assert main(_score(str(tmp_path / "imgs"), "--out", str(fresh), *mcm)) == 0
    rows = _rows_by_path(out)
    assert rows == _rows_by_path(fresh) and len(rows) == 4 and {str(p) for p in images} < rows.keys()
    assert all(r["top_negative"] == "" for r in rows.values())  # MCM has no negatives
    assert len({p.name.split("-")[1] for p in out.glob("part-*.parquet")}) == 1  # one run's parts only
    assert json.loads((out / "_detector.json").read_text())["method"] == "mcm"
    assert json.loads((out / "_summary.json").read_text())["rows_in_folder"] == 4
    assert (out / "_notes.md").read_text() == "mine"
    # the same detector with another threshold would mix two flags in one table: refused too
    _images(tmp_path / "imgs" / "newer", 1, seed=105)
    moved = [arg if arg != "0.5" else "0.25" for arg in mcm]
    capsys.readouterr()
    assert main(_score(str(tmp_path / "imgs"), "--out", str(out), *moved)) == 2
    err = _error(capsys)
    assert f"--out {out} holds rows flagged OOD below 0.5 (--threshold); this run flags below 0.25" in err
    assert len(_rows_by_path(out)) == 4  # nothing written


def test_other_params_arrays_or_model_are_refused_naming_both(tmp_path, saved, tiny_openclip):
    import negspace
    from negspace import MCMConfig, ModelConfig, ScoreConfig

    _images(tmp_path / "imgs", 2, seed=103)
    model = ModelConfig(spec=tiny_openclip.spec, weights=tiny_openclip.weights, device="cpu", progress=False)
    out = tmp_path / "rows"
    mcm = ScoreConfig(method="mcm", classes=str(saved / "classes.txt"), threshold=0.5)
    negspace.score_collection([tmp_path / "imgs"], out, mcm, model=model)
    # other parameters of the same method (refused from Python: its names, not the options)
    with pytest.raises(negspace.NegspaceError) as info:
        negspace.score_collection(
            [tmp_path / "imgs"], out, replace(mcm, params=MCMConfig(temperature=2.0)), model=model
        )
    digest = json.loads((out / "_detector.json").read_text())["digest"]
    message = str(info.value)
    assert message.startswith(f"out {out} holds scores of mcm (detector {digest[:19]})") and "--" not in message
    assert "this run is mcm (detector sha256:" in message and "pass overwrite to start afresh" in message
    # another model (same method and classes)
    other = save_tiny_openclip(tmp_path / "other", seed=1)
    with pytest.raises(negspace.NegspaceError, match=f"with {other.spec}"):
        negspace.score_collection(
            [tmp_path / "imgs"],
            out,
            mcm,
            model=ModelConfig(spec=other.spec, weights=other.weights, device="cpu", progress=False),
        )
    # the same arrays but one changed: the digest tells them apart, before the model loads
    det = tmp_path / "det"
    shutil.copytree(saved / "det-neglabel", det)
    negspace.score_collection(
        [tmp_path / "imgs"], tmp_path / "neg", ScoreConfig(detector=saved / "det-neglabel"), model=model
    )
    negatives = np.load(det / "neg_text_features.npy")
    np.save(det / "neg_text_features.npy", negatives[::-1].copy())
    with pytest.raises(negspace.NegspaceError) as info:
        negspace.score_collection(
            [tmp_path / "imgs"],
            tmp_path / "neg",
            ScoreConfig(detector=det),
            model=ModelConfig(spec="openclip:NoSuchArch/none"),
        )
    assert "holds scores of neglabel (detector sha256:" in str(info.value)
    assert "this run is neglabel (detector sha256:" in str(info.value) and "NoSuchArch" in str(info.value)
    assert len(_table(out)) == len(_table(tmp_path / "neg")) == 2


def test_one_file_under_several_spellings_is_one_row_also_on_a_re_run(
    tmp_path,
    saved,
    tiny_openclip,
    capsys,
    monkeypatch,
):
    images = _images(tmp_path / "data" / "imgs", 3, seed=104)
    monkeypatch.chdir(tmp_path)
    pq.write_table(
        pa.table({"path": [str(images[0]), "imgs/../imgs/" + images[1].name]}), tmp_path / "data" / "t.parquet"
    )
    (tmp_path / "data" / "l.txt").write_text(f"imgs/{images[2].name}\n{images[2]}\n")
    (tmp_path / "link").symlink_to(tmp_path / "data" / "imgs")
    out = tmp_path / "rows"
    args = ["--detector", str(saved / "det-neglabel"), "--out", str(out), *_model_args(tiny_openclip)]
    assert main(_score("data/imgs", "data/t.parquet", "data/l.txt", "link", *args)) == 0
    # the table's 2, the list's 2 and the link's 3 name files of data/imgs
    assert "7 paths named a file already listed" in capsys.readouterr().out
    assert sorted(r["path"] for r in _table(out)) == sorted(f"data/imgs/{p.name}" for p in images)
    # absolute spellings on a re-run: nothing new
    assert main(_score(str(tmp_path / "data" / "imgs"), *args)) == 0
    assert "0 images scored (3 already written" in capsys.readouterr().out and len(_table(out)) == 3


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_a_path_column_that_is_not_text_is_one_sentence_naming_it_before_the_model(
    tmp_path,
    saved,
    capsys,
    kind,
):
    table = tmp_path / f"x.{kind}"
    if kind == "parquet":
        pq.write_table(pa.table({"path": pa.array([1, 2], pa.int64()), "name": ["a", "b"]}), table)
    else:
        table.write_text("path,name\n1,a\n2,b\n")
    assert (
        main(
            _score(
                str(table),
                "--detector",
                str(saved / "det-neglabel"),
                "--out",
                str(tmp_path / "o"),
                "--model",
                "openclip:NoSuchArch/none",
            )
        )
        == 2
    )
    err = _error(capsys)
    assert f"Column 'path' of {table} holds int64, not text paths" in err and err.count("\n") == 1
    assert "NoSuchArch" not in err and not (tmp_path / "o").exists()


def test_a_missing_threshold_id_set_names_its_option_or_argument(tmp_path, saved, capsys):
    import negspace
    from negspace import ScoreConfig

    _images(tmp_path / "imgs", 1, seed=105)
    missing = tmp_path / "nope"
    assert (
        main(
            _score(
                str(tmp_path / "imgs"),
                "--detector",
                str(saved / "det-neglabel"),
                "--threshold-id",
                str(missing),
                "--out",
                str(tmp_path / "o"),
                "--model",
                "openclip:NoSuchArch/none",
            )
        )
        == 2
    )
    assert f"--threshold-id {missing} does not exist" in _error(capsys)
    with pytest.raises(negspace.NegspaceError) as info:
        negspace.score_collection(
            [tmp_path / "imgs"], tmp_path / "o", ScoreConfig(detector=saved / "det-neglabel", threshold_id=str(missing))
        )
    assert str(info.value).startswith(f"threshold_id {missing} does not exist")
    assert not (tmp_path / "o").exists()

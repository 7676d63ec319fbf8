"""The Ray Data engine: the same rows as the local engine, on a local Ray instance of 2 CPUs."""

from __future__ import annotations

import pyarrow.dataset as ds
import pytest

from external_tools import require_module
from fixtures_models import TINY_DIM
from negspace.cli import main
from numerics import FEATURE_ERROR, assert_features_close, assert_scores_close
from test_score import _images, _model_args, saved  # noqa: F401  (the saved-detector fixture)

ray = require_module("ray", extra="ray")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for this module (2 CPUs, as on this machine)."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _rows(folder):
    return {r["path"]: r for r in ds.dataset(folder, format="parquet").to_table().to_pylist()}


@pytest.mark.numerics
def test_ray_and_local_engines_score_the_same_files_the_same(tmp_path, saved, tiny_openclip, local_ray):  # noqa: F811
    _images(tmp_path / "collection", 14, seed=11)
    (tmp_path / "collection" / "broken.jpg").write_bytes(b"not an image")
    common = [
        "score",
        str(tmp_path / "collection"),
        "--detector",
        str(saved / "det-neglabel"),
        "--chunk-size",
        "5",
        "--batch-size",
        "4",
        *_model_args(tiny_openclip),
    ]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--ray-actors", "1"]) == 0
    local, on_ray = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert on_ray.keys() == local.keys() and len(local) == 14
    for path, row in local.items():
        other = on_ray[path]
        assert_scores_close(other["score"], row["score"], dim=TINY_DIM, feature_error=FEATURE_ERROR)
        assert (other["sha256"], other["ood"], other["id_class"], other["top_negative"]) == (
            row["sha256"],
            row["ood"],
            row["id_class"],
            row["top_negative"],
        )
    assert "broken.jpg" in (tmp_path / "ray" / "_skipped.csv").read_text()
    # a re-run on Ray resumes: nothing left to do
    assert main([*common, "--out", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    assert len(_rows(tmp_path / "ray")) == 14


@pytest.mark.numerics
def test_ray_embed_writes_the_local_features(tmp_path, saved, tiny_openclip, local_ray):  # noqa: F811
    common = ["embed", str(saved / "id"), "--batch-size", "4", *_model_args(tiny_openclip)]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    local, on_ray = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert on_ray.keys() == local.keys()
    for path, row in local.items():
        assert_features_close([on_ray[path]["feature"]], [row["feature"]])


def test_ray_refuses_a_method_that_learns_from_the_stream(tmp_path, capsys):
    assert (
        main(
            [
                "score",
                str(tmp_path),
                "--method",
                "tanl",
                "--classes",
                "imagenet",
                "--engine",
                "ray",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "learns from the stream" in capsys.readouterr().err

"""The wheel holds what an installed negspace needs: built from the files a clean clone has,
installed without dependencies into a folder of its own, it answers `--version`, lists the bench
suites and writes the demo set (an editable install would hide missing package data)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import negspace

ROOT = Path(__file__).resolve().parent.parent


def _clean_clone(target: Path) -> Path:
    """The repository's files as a clean clone would have them (tracked, or new and not ignored)."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: the wheel test builds from the repository's own files")
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a file deleted in the work tree but still tracked is not in a clone of it
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel installed alone (``--no-deps --target``); its dependencies are the test
    environment's."""
    work = tmp_path_factory.mktemp("wheel")
    source = _clean_clone(work / "clone")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(work / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    wheel = next((work / "dist").glob("negspace-*.whl"))
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return target


def _run(installed: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed), "NEGSPACE_CACHE_DIR": str(cwd / "cache")}
    script = installed / "bin" / "negspace"  # the console script the wheel declares
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_the_wheel_is_named_by_the_one_version(installed):
    # the version is written once (negspace.__version__); the wheel's metadata reads it from there
    assert [p.name for p in installed.glob("negspace-*.dist-info")] == [f"negspace-{negspace.__version__}.dist-info"]


def test_the_installed_wheel_answers_its_version_from_its_own_files(installed, tmp_path):
    result = _run(installed, "--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"negspace {negspace.__version__}", result.stderr
    where = subprocess.run(
        [sys.executable, "-c", "import negspace; print(negspace.__file__)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(installed)},
        cwd=tmp_path,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed)  # not the editable checkout


def test_the_installed_wheel_lists_the_bench_suites_from_its_package_data(installed, tmp_path):
    result = _run(installed, "bench", "--list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for suite in ("imagenet:", "openood-v1.5:", "imagenet10-20:", "fine-grained:", "domain-shift:"):
        assert suite in result.stdout
    assert "iNaturalist" in result.stdout and "compared with: ANTS paper/Table 1" in result.stdout


def test_the_installed_wheel_writes_the_demo_set_and_reads_its_class_names_and_corpus(installed, tmp_path):
    result = _run(installed, "demo-data", "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        len(list((tmp_path / "demo" / "id").iterdir())) == 12 and len(list((tmp_path / "demo" / "ood").iterdir())) == 12
    )
    # ImageNet's names and the WordNet corpus are package data, read from the wheel's files
    code = (
        "import negspace; from negspace.corpus.wordnet import load_wordnet_corpus; "
        "print(len(negspace.load_class_names('imagenet')), len(load_wordnet_corpus().nouns))"
    )
    counted = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(installed)},
        timeout=300,
    )
    names, nouns = map(int, counted.stdout.split())
    assert names == 1000 and nouns > 50_000, counted.stderr


def test_every_package_data_file_of_the_source_tree_is_in_the_wheel(installed):
    package = ROOT / "src" / "negspace"
    data = {
        p.relative_to(package.parent).as_posix()
        for p in package.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }
    shipped = {p.relative_to(installed).as_posix() for p in (installed / "negspace").rglob("*") if p.is_file()}
    assert data <= shipped, sorted(data - shipped)


def test_the_changelog_describes_the_current_version_and_the_renamed_modules():
    import importlib

    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"\n## {negspace.__version__} - " in changelog
    # each renamed module is named with its new name, which imports
    for old, new in (
        ("negspace.evaluate", "negspace.evaluation"),
        ("negspace.cli_bench", "negspace.cli"),
        ("negspace.detectors.ants_banks", "negspace.detectors.ants"),
        ("negspace.detectors.registry", "negspace.methods"),
        ("negspace.encoders._weights", "negspace.encoders.weights"),
    ):
        assert f"`{old}" in changelog and f"`{new}" in changelog, old
        importlib.import_module(new)

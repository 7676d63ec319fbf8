"""Bad input through the real command line (a subprocess): one sentence naming the option or
file, exit 2, no traceback, and no model loaded or work done first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BOGUS_MODEL = ["--model", "openclip:NoSuchArch/none"]  # loading it would fail with a model error


def negspace(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "negspace.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def assert_clear_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


@pytest.fixture(scope="module")
def classes(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("classes") / "classes.txt"
    path.write_text("cat\ndog\n", encoding="utf-8")
    return path


NUMERIC = [
    ("--mllm-timeout", "0"),
    ("--mllm-concurrency", "0"),
    ("--mllm-retries", "-1"),
    ("--mllm-image-size", "0"),
    ("--seed", "-1"),
    ("--seed", str(2**70)),
    ("--batch-size", "0"),
    ("--ants-ens-stop-step", "-2"),
    ("--max-mllm-calls", "x"),
    # every detector number, named before any model loads
    ("--tau", "0"),
    ("--tau", "nan"),
    ("--tau", "inf"),
    ("--temperature", "-1"),
    ("--groups", "0"),
    ("--percentile", "101"),
    ("--per-part-fraction", "0"),
    ("--num-negatives", "0"),
    ("--tanl-alpha", "1.5"),
    ("--tanl-beta", "0"),
    ("--tanl-step", "0"),
    ("--tanl-queue-length", "0"),
    ("--tanl-g", "-0.1"),
    ("--tanl-otsu-window", "0"),
    ("--adaneg-memory-length", "0"),
    ("--adaneg-gamma", "2"),
    ("--adaneg-g", "nan"),
    ("--adaneg-groups", "0"),
    ("--adaneg-sample-scale", "-1"),
    ("--adaneg-nl-weight", "-0.1"),
    ("--ants-lam", "1.1"),
    ("--ants-activation-negatives", "0"),
]


def test_numeric_options_are_checked_at_parse_time(classes, capsys):
    from negspace.cli import main

    def eval_args(option, value):
        return [
            "eval",
            "--method",
            "ants",
            "--classes",
            str(classes),
            "--id",
            "a",
            "--ood",
            "b",
            option,
            value,
            *BOGUS_MODEL,
        ]

    assert_clear_error(negspace(*eval_args("--mllm-timeout", "0")), "--mllm-timeout")  # the real CLI once
    for option, value in NUMERIC:  # every option in-process (the same parser)
        with pytest.raises(SystemExit) as stop:
            main(eval_args(option, value))
        assert stop.value.code == 2 and option in capsys.readouterr().err, option


def test_tau_zero_is_refused_at_parse_time_naming_the_option(classes):
    result = negspace(
        "eval", "--method", "neglabel", "--classes", str(classes), "--id", "a", "--ood", "b", "--tau", "0", *BOGUS_MODEL
    )
    assert_clear_error(result, "--tau", "expected a positive number, got 0")


def test_score_threshold_must_be_finite(tmp_path, capsys):
    from negspace.cli import main

    for value in ("nan", "inf", "-inf"):
        with pytest.raises(SystemExit) as stop:
            main(["score", str(tmp_path), "--out", str(tmp_path / "o"), "--method", "mcm", f"--threshold={value}"])
        assert stop.value.code == 2 and "--threshold: expected a finite number" in capsys.readouterr().err


@pytest.mark.parametrize(
    "spec",
    [
        "openai://user:s3cret@host:99/v1/m",
        "openai:user:s3cret@host",
        "bogus://user:s3cret@host/v1/m",
        "openai:http://user:s3cret@127.0.0.1:9/v1/m",
    ],
)
def test_an_mllm_spec_never_prints_its_secret(tmp_path, classes, spec):
    from PIL import Image

    for name in ("id", "ood"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "a.png")
    result = negspace(
        "eval",
        "--method",
        "ants",
        "--classes",
        str(classes),
        "--id",
        str(tmp_path / "id"),
        "--ood",
        f"o={tmp_path / 'ood'}",
        "--mllm",
        spec,
        "--out",
        str(tmp_path / "out"),
        *BOGUS_MODEL,
    )
    assert_clear_error(result, "***@")
    assert "s3cret" not in result.stderr + result.stdout


def test_credentials_are_redacted_from_any_text():
    from negspace.redact import redact_credentials

    assert redact_credentials("openai://u:pw@h:1/v1/m") == "openai://***@h:1/v1/m"
    assert redact_credentials("openai:u:pw@h") == "openai:***@h"
    assert redact_credentials("http://h/v1?api_key=abc&x=1&token=t") == "http://h/v1?api_key=***&x=1&token=***"
    for plain in (
        "openai:http://localhost:8000/v1/Qwen/Qwen2-VL-2B-Instruct",
        "hf:Qwen/Qwen2-VL-2B-Instruct",
        "openai:http://h:8000/v1#org/model",
        "/data/a@b/images",
        "--mllm-timeout",
    ):
        assert redact_credentials(plain) == plain


def test_mine_checks_its_output_before_any_work(tmp_path, classes):
    folder = tmp_path / "out"
    folder.mkdir()
    for target, words in (
        (folder, ("-o/--output", "is a folder")),
        (tmp_path / "missing" / "x.txt", ("-o/--output", "does not exist")),
    ):
        assert_clear_error(negspace("mine", "--classes", str(classes), "-o", str(target), *BOGUS_MODEL), *words)


def test_demo_data_on_a_file(tmp_path):
    target = tmp_path / "a-file"
    target.write_text("x")
    assert_clear_error(negspace("demo-data", str(target)), str(target), "is a file")


def test_cache_stats_into_a_closed_pipe_is_quiet(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "negspace.cli", "cache", "stats", "--cache-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()  # the reader is gone before anything is printed, as with `| head -0`
    error = process.stderr.read()
    assert process.wait(timeout=120) == 0
    assert "BrokenPipeError" not in error and "Traceback" not in error


def test_method_options_that_cannot_work_fail_before_the_model_loads(tmp_path, classes):
    one = tmp_path / "one.txt"
    one.write_text("cat\n", encoding="utf-8")
    labels = tmp_path / "labels.txt"
    labels.write_text("rock\nriver\nmoon\n", encoding="utf-8")
    sets = ["--id", str(tmp_path), "--ood", f"o={tmp_path}"]
    assert_clear_error(
        negspace("eval", "--method", "mcm", "--classes", str(one), *sets, *BOGUS_MODEL),
        "MCM needs at least two ID classes",
    )
    assert_clear_error(
        negspace("eval", "--method", "mcm", "--classes", str(classes), "--negatives", str(labels), *sets, *BOGUS_MODEL),
        "--negatives is not used by --method mcm",
    )
    assert_clear_error(
        negspace(
            "eval", "--method", "neglabel", "--classes", str(classes), "--negatives", str(labels), *sets, *BOGUS_MODEL
        ),
        "--groups 100 is larger than the 3 negative labels",
    )
    assert_clear_error(
        negspace(
            "eval", "--method", "neglabel", "--classes", str(classes), "--num-negatives", "50", *sets, *BOGUS_MODEL
        ),
        "--groups 100",
        "--num-negatives",
    )
    binary = tmp_path / "labels.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    assert_clear_error(
        negspace(
            "eval", "--method", "neglabel", "--classes", str(classes), "--negatives", str(binary), *sets, *BOGUS_MODEL
        ),
        str(binary),
        "not UTF-8",
    )
    assert_clear_error(
        negspace(
            "eval", "--method", "neglabel", "--classes", str(classes), "--negatives", str(tmp_path), *sets, *BOGUS_MODEL
        ),
        str(tmp_path),
        "is a folder",
    )


def test_ood_names_and_sets(tmp_path, classes):
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    assert_clear_error(
        negspace(
            "eval",
            "--method",
            "neglabel",
            "--classes",
            str(classes),
            "--id",
            str(images),
            "--ood",
            f"id={images}",
            *BOGUS_MODEL,
        ),
        "--ood names",
    )
    same = negspace(
        "eval",
        "--method",
        "neglabel",
        "--classes",
        str(classes),
        "--id",
        str(images),
        "--ood",
        f"copy={images}",
        "--out",
        str(tmp_path / "o"),
        *BOGUS_MODEL,
    )
    assert "--ood copy is the same set as --id" in same.stderr and same.returncode == 2


def test_version():
    result = negspace("--version")
    assert result.returncode == 0 and result.stdout.startswith("negspace 0.")


def test_out_must_be_new_or_empty_and_a_failed_run_leaves_no_folder(tmp_path, classes):
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    used = tmp_path / "used"
    used.mkdir()
    (used / "hist_old.png").write_bytes(b"stale")
    sets = ["--classes", str(classes), "--id", str(images), "--ood", f"o={images}"]
    assert_clear_error(
        negspace("eval", "--method", "neglabel", *sets, "--out", str(used), *BOGUS_MODEL),
        f"--out {used} is not empty",
        "--overwrite",
    )
    fresh = tmp_path / "fresh" / "run"
    failed = negspace("eval", "--method", "neglabel", *sets, "--out", str(fresh), *BOGUS_MODEL)
    assert failed.returncode == 2 and not (tmp_path / "fresh").exists()  # the model failed: no empty folders left
    # --overwrite clears negspace's own files, keeps anything else (the model still fails here)
    (used / "notes.txt").write_text("mine")
    negspace("eval", "--method", "neglabel", *sets, "--out", str(used), "--overwrite", *BOGUS_MODEL)
    assert not (used / "hist_old.png").exists() and (used / "notes.txt").read_text() == "mine"


def test_set_messages_name_the_fix(tmp_path, classes):
    import numpy as np

    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.asarray([{"a": 1}, None], dtype=object), allow_pickle=True)
    result = negspace(
        "eval",
        "--method",
        "neglabel",
        "--classes",
        str(classes),
        "--id",
        str(pickled),
        "--ood",
        f"o={pickled}",
        *BOGUS_MODEL,
    )
    assert_clear_error(result, str(pickled), "never unpickles", "numpy.save")
    assert "allow_pickle" not in result.stderr
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    result = negspace(
        "eval",
        "--method",
        "neglabel",
        "--classes",
        str(classes),
        "--id",
        str(tmp_path / "imgs"),
        "--ood",
        "../a=b",
        *BOGUS_MODEL,
    )
    assert_clear_error(result, "../a=b", "NAME=PATH", "--ood a=../b")


def test_demo_data_refuses_a_folder_with_other_files_and_rewrites_its_own(tmp_path):
    from negspace.cli import main

    assert main(["demo-data", str(tmp_path / "demo")]) == 0
    assert main(["demo-data", str(tmp_path / "demo")]) == 0  # the README command, run again
    assert len(list((tmp_path / "demo" / "id").iterdir())) == 12
    (tmp_path / "demo" / "id" / "holiday.jpg").write_bytes(b"mine")
    assert_clear_error(negspace("demo-data", str(tmp_path / "demo")), "holiday.jpg", "new or empty folder")


def test_cache_clear_keeps_paid_answers_unless_confirmed(tmp_path):
    import json
    import os

    from negspace.corpus.mining import write_json_atomic
    from negspace.mllm.response_cache import ResponseStore

    store = ResponseStore(tmp_path / "mllm.sqlite3")
    store.put_many("some-model", {"k1": "a", "k2": "b"})
    store.close()
    write_json_atomic(tmp_path / "mined" / "x.json", {"labels": []})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "mined" / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not 0600
    stats = json.loads(negspace("cache", "stats", "--json", "--cache-dir", str(tmp_path)).stdout)
    assert stats["mined"]["entries"] == 1 and stats["mllm"]["entries"] == 2
    assert "mined label lists: 1 entries" in negspace("cache", "stats", "--cache-dir", str(tmp_path)).stdout
    # no terminal to ask on: refused with the count and the flag, nothing deleted
    assert_clear_error(negspace("cache", "clear", "--cache-dir", str(tmp_path)), "2 cached MLLM answers", "--yes")
    assert ResponseStore(tmp_path / "mllm.sqlite3").count() == 2
    features_only = negspace("cache", "clear", "--what", "features", "--cache-dir", str(tmp_path))
    assert features_only.returncode == 0 and not (tmp_path / "mined" / "x.json").exists()
    confirmed = negspace("cache", "clear", "--yes", "--cache-dir", str(tmp_path))
    assert confirmed.returncode == 0 and ResponseStore(tmp_path / "mllm.sqlite3").count() == 0


def test_quiet_means_no_bars_and_a_rerun_says_what_came_from_the_cache(tmp_path, classes, tiny_openclip):
    import os

    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    for k in range(3):
        Image.new("RGB", (32, 32), (40 * k, 90, 200)).save(images / f"{k}.png")
    env = {**os.environ, "NEGSPACE_CACHE_DIR": str(tmp_path / "cache")}
    model = ["--model", tiny_openclip.spec, "--weights", str(tiny_openclip.weights), "--device", "cpu"]

    def run(*extra):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "negspace.cli",
                "eval",
                "--method",
                "mcm",
                "--classes",
                str(classes),
                "--id",
                str(images),
                "--ood",
                f"o={images}",
                *model,
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )

    first = run("--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    assert "%|" in first.stderr  # a bar, even for three images
    again = run("--out", str(tmp_path / "b"))
    assert "3 of 3 image files' features from the cache" in again.stderr
    quiet = run("--out", str(tmp_path / "c"), "-q")
    assert quiet.returncode == 0 and "%|" not in quiet.stderr


def test_help_describes_every_option_with_its_default():
    import re

    text = " ".join(negspace("eval", "--help").stdout.split())  # argparse wraps lines
    assert re.search(r"--method \{[a-z,]+\}\s+mcm, neglabel, csp, negrefine \(static", text)
    for option, default in (
        ("--split", "proportional"),
        ("--per-part-fraction", "0.15"),
        ("--ants-threshold", "paper"),
        ("--ants-schedule", "default"),
        ("--ants-diversity-size", "50"),
    ):
        assert re.search(rf"{option} .*?\(default: {default}\)", text), option
    assert "cache folder of features, mined labels and MLLM answers" in text


def test_verbosity_flags_before_and_after_the_command(tmp_path):
    result = negspace("-q", "cache", "stats", "--cache-dir", str(tmp_path), "-v")
    assert result.returncode == 0 and "cache folder" in result.stdout, result.stderr


# -- what a person sees (issue 19, messages and help) --------------------------------------------------


def test_a_bad_option_is_one_sentence_without_the_usage_block(classes):
    result = negspace(
        "eval",
        "--method",
        "neglabel",
        "--classes",
        str(classes),
        "--id",
        "a",
        "--ood",
        "b",
        "--groups",
        "0",
        *BOGUS_MODEL,
    )
    assert_clear_error(result, "--groups", "negspace eval --help")
    assert "usage:" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_ants_without_an_mllm_is_refused_before_the_model_loads(tmp_path, classes):
    from PIL import Image

    for name in ("id", "ood"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "a.png")
    result = negspace(
        "eval",
        "--method",
        "ants",
        "--classes",
        str(classes),
        "--id",
        str(tmp_path / "id"),
        "--ood",
        f"o={tmp_path / 'ood'}",
        "--out",
        str(tmp_path / "out"),
        *BOGUS_MODEL,
    )
    assert_clear_error(result, "ANTS needs a multimodal LLM")
    assert "NoSuchArch" not in result.stderr and not (tmp_path / "out").exists()


def test_help_offers_only_what_a_command_uses():
    from negspace.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    score_help, mine_help = commands["score"].format_help(), commands["mine"].format_help()
    assert (
        "{mcm,neglabel,csp,negrefine}" in score_help
        and "tanl" not in score_help.split("--method")[1].split("--classes")[0]
    )
    for option in ("--workers", "--features", "--scoring-backend", "--preprocess"):
        assert option not in mine_help, option
    assert "imagenet-20" in commands["eval"].format_help()  # the built-in class lists are named


def test_cache_stats_in_text_and_json_agree(tmp_path):
    from negspace.cache import FeatureStore

    store = FeatureStore.in_dir(tmp_path)
    store.put_many({"k": np.ones(4, np.float32)})
    store.close()
    first = json.loads(negspace("cache", "stats", "--json", "--cache-dir", str(tmp_path)).stdout)
    text = negspace("cache", "stats", "--cache-dir", str(tmp_path)).stdout
    second = json.loads(negspace("cache", "stats", "--json", "--cache-dir", str(tmp_path)).stdout)
    assert first["features"]["size_bytes"] == second["features"]["size_bytes"] > 0
    from negspace.mllm.response_cache import _human

    assert f"features: 1 entries, {_human(first['features']['size_bytes'])}" in text


@pytest.mark.parametrize(
    "command", [["bench", "--suite", "imagenet"], ["score", "x", "--out", "y"], ["cache", "stats"]]
)
def test_an_unknown_option_points_to_the_help_of_the_command_that_was_run(command):
    result = negspace(*command, "--no-such-option")
    name = "negspace " + " ".join(word for word in command[:2] if not word.startswith("-") and word not in ("x",))
    assert_clear_error(result, "unrecognized arguments: --no-such-option", f"see '{name} --help'")


REFUSED_WITHOUT_TORCH = """
import sys
from negspace.cli import main
code = main(sys.argv[1:])
print(code, sorted(m for m in ("torch", "open_clip", "torchvision", "sklearn") if m in sys.modules))
"""


def test_bench_and_eval_refuse_bad_data_before_importing_torch(tmp_path, classes):
    # the data and options are checked before any heavy library loads: a refusal takes a second,
    # not the 4-20 s of importing torch and open_clip (benchmarks/refusal_time.py measures it)
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (
        ["bench", "--suite", "imagenet", "--data-root", str(empty)],
        [
            "eval",
            "--method",
            "neglabel",
            "--classes",
            "imagenet",
            "--id",
            str(tmp_path / "missing"),
            "--ood",
            f"x={empty}",
        ],
        ["eval", "--method", "mcm", "--classes", str(classes), "--id", str(empty), "--ood", str(empty)],
    ):
        result = subprocess.run(
            [sys.executable, "-c", REFUSED_WITHOUT_TORCH, *args], capture_output=True, text=True, timeout=120
        )
        assert result.stdout.split("\n")[0] == "2 []", (args, result.stdout, result.stderr)

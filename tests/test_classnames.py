"""Class-name lists: the built-in ImageNet names and user files with messy lines."""

import pytest

from negspace.classnames import load_class_names
from negspace.errors import ClassNamesError


def test_imagenet_has_the_1000_clip_names():
    names = load_class_names("imagenet")
    assert len(names) == 1000
    assert names.names[0] == "tench" and names.names[-1] == "toilet paper"
    # CLIP's curated list repeats two names; they are reported, not dropped.
    assert any("missile" in p for p in names.problems)


def test_file_with_blank_lines_whitespace_and_duplicates_is_reported(tmp_path, caplog):
    path = tmp_path / "classes.txt"
    path.write_text("cat\n  dog \n\nbird\nCat\n\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        names = load_class_names(path)
    assert names.names == ("cat", "dog", "bird", "Cat")
    joined = " | ".join(names.problems)
    assert "whitespace" in joined and "line(s): 2" in joined
    assert "2 blank line(s)" in joined and "3, 6" in joined
    assert "'cat' appears 2 times (lines 1, 5)" in joined
    assert len(caplog.records) == 3


def test_clean_file_has_no_problems(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("\ufeffgolden retriever\ntabby cat\n", encoding="utf-8")
    names = load_class_names(path)
    assert names.names == ("golden retriever", "tabby cat")
    assert names.problems == ()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\n \n", "contains no class names"), (b"caf\xe9\n", "not valid UTF-8")],
)
def test_unusable_files_raise_one_clear_error(tmp_path, content, message):
    path = tmp_path / "classes.txt"
    path.write_bytes(content)
    with pytest.raises(ClassNamesError, match=message):
        load_class_names(path)


def test_missing_file_names_the_builtin_choices(tmp_path):
    with pytest.raises(ClassNamesError, match="imagenet"):
        load_class_names(tmp_path / "nope.txt")

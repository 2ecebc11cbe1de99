"""delibench.yamlfile: the one reader of user YAML files (run configs, price sheets, regions files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from delibench.errors import UsageError
from delibench.yamlfile import check_keys, parse_yaml, read_yaml


def _file(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "doc.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def test_reads_a_mapping_and_an_empty_file_is_an_empty_mapping(tmp_path: Path) -> None:
    assert read_yaml(_file(tmp_path, "a: 1\nb: [x]\n"), "config") == {"a": 1, "b": ["x"]}
    assert read_yaml(_file(tmp_path, ""), "config") == {}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("a: [1, 2\n", "doc.yaml: not valid YAML at line 2: expected ',' or ']'"),
        ("- a\n- b\n", "doc.yaml: a price sheet must be a YAML mapping, got list"),
        ("just text\n", "doc.yaml: a price sheet must be a YAML mapping, got str"),
        (b"a: \xff\xfe\n", "doc.yaml: cannot read price sheet:"),
    ],
)
def test_every_problem_is_one_line_that_names_the_file(tmp_path: Path, content: str | bytes, expected: str) -> None:
    with pytest.raises(UsageError) as info:
        read_yaml(_file(tmp_path, content), "price sheet")
    assert info.value.message.startswith(str(tmp_path))
    assert expected in info.value.message
    assert "\n" not in str(info.value)


def test_a_missing_file_carries_the_callers_hint(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        read_yaml(tmp_path / "nope.yaml", "regions file", hint="see the example")
    assert info.value.message == f"{tmp_path / 'nope.yaml'}: cannot read regions file: No such file or directory"
    assert info.value.hint == "see the example"


def test_the_syntax_error_wording_can_be_the_callers() -> None:
    with pytest.raises(UsageError, match=r"^x.yaml: invalid YAML at line 1"):
        parse_yaml("a: [", "x.yaml", invalid="invalid YAML")


def test_unknown_key_hints_at_the_closest_or_lists_the_allowed() -> None:
    with pytest.raises(UsageError) as info:
        check_keys({"batch_sise": 1}, ("batch_size", "seed"), "cfg.yaml")
    assert info.value.message == "cfg.yaml: unknown key 'batch_sise'" and info.value.hint == "did you mean 'batch_size'?"
    with pytest.raises(UsageError) as info:
        check_keys({"zzz": 1}, ("batch_size", "seed"), "cfg.yaml")
    assert info.value.hint == "allowed keys: batch_size, seed"
    check_keys({"seed": 1}, ("batch_size", "seed"), "cfg.yaml")

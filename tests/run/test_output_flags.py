"""``--html`` is checked before anything runs; ``--json`` has a shape scripts can rely on."""

from __future__ import annotations

import re

import pytest

from tests.run.conftest import FAST

SHORT = [*FAST, "--max-steps", "4"]


@pytest.mark.parametrize("command", ["run", "compare"])
@pytest.mark.parametrize("where", ["missing-dir", "parent-is-file", "is-dir"])
def test_unwritable_html_path_exits_2_before_the_run(mnist_dir, tmp_path, cli, command, where):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    html = {"missing-dir": tmp_path / "nope" / "r.html", "parent-is-file": tmp_path / "afile" / "r.html", "is-dir": tmp_path / "adir"}[where]
    results = tmp_path / "results"
    res = cli(command, "--data", mnist_dir, "--loader", "bucket", *SHORT, "--html", html, "--results-dir", results)
    assert res.code == 2, res.err
    assert res.err.startswith("error: --html") and "Traceback" not in res.err, res.err
    assert not results.exists()  # nothing ran, nothing was saved
    assert not (tmp_path / "nope").exists()


def test_compare_json_is_a_list_even_for_one_loader(mnist_dir, tmp_path, cli):
    res = cli("compare", "--data", mnist_dir, "--loader", "bucket", *SHORT, "--json", "--results-dir", tmp_path)
    assert res.code == 0, res.err
    doc = res.json()
    assert isinstance(doc, list) and [r["spec"]["loader"]["kind"] for r in doc] == ["bucket"]


def test_run_json_is_an_object_for_one_loader_and_a_list_for_several(mnist_dir, tmp_path, cli):
    one = cli("run", "--data", mnist_dir, "--loader", "bucket", *SHORT, "--json", "--results-dir", tmp_path / "a")
    assert one.code == 0, one.err
    assert isinstance(one.json(), dict) and one.json()["spec"]["loader"]["kind"] == "bucket"
    two = cli("run", "--data", mnist_dir, "--loader", "bucket", "--loader", "memory", *SHORT, "--json", "--results-dir", tmp_path / "b")
    assert two.code == 0, two.err
    assert [r["spec"]["loader"]["kind"] for r in two.json()] == ["bucket", "memory"]


def _flat(text: str) -> str:
    """Help text without rich's panel borders and line wrapping."""
    return re.sub(r"[\s\u2502]+", " ", text)


def test_json_shape_is_in_the_help(cli):
    assert "always a list" in _flat(cli("compare", "--help").out)
    assert "one record object for one loader" in _flat(cli("run", "--help").out)

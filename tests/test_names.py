"""One meaning per name, one order for arguments: the old spellings and orders are usage errors that
name the new ones (nothing changes meaning silently)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from emdcli.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("command", "old", "new"),
    [("classify", "--workers", "--decode-threads"), ("watch", "--workers", "--decode-threads"),
     ("batch", "--batch-size", "--task-size"), ("search", "--shortlist", "--rerank-top")],
)  # fmt: skip
def test_a_renamed_option_is_a_usage_error_naming_the_new_one(
    command: str, old: str, new: str, support_dir: Path, query_dir: Path
) -> None:
    res = runner.invoke(app, [command, str(support_dir), str(query_dir), old, "2"])
    assert res.exit_code == 2
    assert (
        res.stderr.splitlines()[0] == f"Error: {old} is now {new} (each option name means one thing in every command)"
    )


def test_the_decoding_threads_of_a_config_file_have_their_new_key(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("workers: 2\n")
    res = runner.invoke(app, ["classify", str(support_dir), str(query_dir), "--config", str(config)])
    assert res.exit_code == 2 and "the key 'workers' is now 'decode_threads'" in res.stderr
    config.write_text("decode-threads: 1\n")
    res = runner.invoke(app, ["classify", str(support_dir), str(query_dir), "--config", str(config), "--model",
                              str(tiny_model), "-f", "csv"])  # fmt: skip
    assert res.exit_code == 0, res.output


def test_search_and_explain_take_the_reference_first_and_say_so_when_given_the_old_order(
    tiny_model: Path, support_dir: Path, query_dir: Path, tmp_path: Path
) -> None:
    query = next(query_dir.rglob("*.png"))
    res = runner.invoke(app, ["search", str(query), str(support_dir), "--model", str(tiny_model)])
    assert res.exit_code == 2
    assert "GALLERY comes first" in res.stderr and f"emdcli search {support_dir} {query}" in res.stderr
    res = runner.invoke(app, ["explain", str(query), str(support_dir), "--model", str(tiny_model), "-o",
                              str(tmp_path / "m.png")])  # fmt: skip
    assert res.exit_code == 2
    assert "SUPPORT_OR_IMAGE comes first" in res.stderr and f"emdcli explain {support_dir} {query}" in res.stderr
    assert not (tmp_path / "m.png").exists()

    res = runner.invoke(app, ["search", str(support_dir), str(query), "--model", str(tiny_model), "-f", "csv",
                              "--rerank-top", "3"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0].startswith("query,rank,path")
    res = runner.invoke(app, ["explain", str(support_dir), str(query), "--model", str(tiny_model), "-o",
                              str(tmp_path / "m.png")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.png").exists()

"""Config files: lookup, validation, precedence of flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from emdcli.config import Settings, load_settings
from emdcli.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_any_file() -> None:
    assert load_settings(None, {}) == Settings()


def test_file_values_then_flags_win(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "top-k: 4\nmetric: l2\ndevice: cpu\nprogress: false\n")
    s = load_settings(cfg, {"top_k": 3, "metric": None})
    assert (s.top_k, s.metric, s.device, s.progress) == (3, "l2", "cpu", False)


def test_per_user_file_is_found(tmp_path: Path) -> None:
    write(tmp_path / "xdg-config" / "emdcli" / "config.yaml", "batch_size: 4\n")
    assert load_settings(None, {}).batch_size == 4


def test_batch_size_may_be_left_to_the_backbone(tmp_path: Path) -> None:
    assert Settings().batch_size is None
    assert load_settings(write(tmp_path / "c.yaml", "batch-size: null\n"), {}).batch_size is None
    assert (
        load_settings(write(tmp_path / "w.yaml", "decode_threads: null\n"), {}).decode_threads is None
    )  # one per core
    with pytest.raises(ConfigError, match="top_k must be a whole number"):
        load_settings(write(tmp_path / "d.yaml", "top-k: null\n"), {})


def test_env_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path / "elsewhere.yml", "decode_threads: 3\n")
    monkeypatch.setenv("EMDCLI_CONFIG", str(cfg))
    assert load_settings(None, {}).decode_threads == 3
    monkeypatch.setenv("EMDCLI_CONFIG", str(tmp_path / "gone.yml"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(None, {})


def test_relative_model_path_is_read_from_the_config_folder(tmp_path: Path) -> None:
    cfg = write(tmp_path / "conf" / "c.yaml", "model: models/mine.json\n")
    assert load_settings(cfg, {}).model == str(tmp_path / "conf" / "models" / "mine.json")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour: red\n", "unknown key 'colour'"),
        ("top-k: many\n", "top_k must be a whole number"),
        ("top-k: 0\n", "top_k must be at least 1"),
        ("device: tpu\n", "device must be one of auto, cpu, cuda"),
        ("progress: 3\n", "progress must be true or false"),
        ("- a\n- b\n", "expected a mapping"),
        ("top-k: [1\n", "not valid YAML"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    cfg = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(cfg, {})
    assert info.value.exit_code == 2


def test_empty_file_is_fine(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path / "c.yaml", ""), {}) == Settings()

"""Settings from a YAML config file, overridden by command-line flags.

Lookup order for the file: ``--config PATH``; else ``$EMDCLI_CONFIG``; else
``$XDG_CONFIG_HOME/emdcli/config.yaml`` (``~/.config/emdcli/config.yaml``) if it
exists. Keys are the long option names (``top-k`` or ``top_k``). A relative
``model`` path is read relative to the config file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from . import defaults
from .errors import ConfigError

CHOICES: dict[str, tuple[str, ...]] = {
    "device": defaults.DEVICES,
    "metric": defaults.METRICS,
    "format": defaults.FORMATS,
    "kshot": defaults.KSHOT_MODES,
    "precision": defaults.PRECISIONS,
}


@dataclass(frozen=True)
class Settings:
    """Every option a config file may set; ``None`` means "decide at run time"."""

    model: str | None = None
    precision: str | None = None  # None: the model as named (emdcli.model.backbone.with_precision)
    device: str = defaults.DEVICE
    metric: str = defaults.METRIC
    format: str | None = None
    top_k: int = defaults.TOP_K
    batch_size: int | None = None  # None: the backbone's (emdcli.model.Backbone.batch_size)
    decode_threads: int | None = defaults.DECODE_THREADS  # None: one per usable core (features.source.decode_workers)
    progress: bool = True
    quiet: bool = False
    shortlist: int = defaults.SHORTLIST
    cache: bool = True
    kshot: str = defaults.KSHOT
    global_weight: float | None = None  # None: by kshot (emdcli.defaults.global_weight_for)
    transductive: bool | None = None  # None: for a set of queries, not for a stream (stdin)
    reject: str = defaults.REJECT  # "none", "auto" or a threshold (see reject_threshold)
    sensitivity: float = defaults.REJECT_SENSITIVITY  # share of in-set queries --reject auto rejects
    unknown_label: str = defaults.UNKNOWN_LABEL


def reject_threshold(text: str) -> float | None:
    """``reject``'s threshold: None for ``auto`` (calibrated), the number for a number; ValueError
    for ``none`` or anything else (ask :func:`rejects` first)."""
    if text == "auto":
        return None
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"not a finite number: {text}")
    return value


def rejects(text: str) -> bool:
    """Whether a ``reject`` setting turns rejection on; ValueError when it is not none, auto or a number."""
    if text == "none":
        return False
    reject_threshold(text)
    return True


#: Keys renamed so that each name means one thing across commands: old -> new.
RENAMED_KEYS = {"workers": "decode_threads"}

_TYPES: dict[str, type] = {
    "top_k": int, "batch_size": int, "decode_threads": int, "progress": bool, "quiet": bool, "shortlist": int,
    "cache": bool, "global_weight": float, "transductive": bool, "sensitivity": float,
}  # fmt: skip
_MINIMUM = {"top_k": 1, "batch_size": 1, "decode_threads": 1, "shortlist": 0}
_OPTIONAL = {"batch_size", "transductive", "decode_threads"}  # may be null: decided at run time


def default_config_path() -> Path:
    """The per-user config file (it need not exist)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "emdcli" / "config.yaml"


def _check(key: str, value: Any, source: str) -> Any:
    if key == "reject":
        text = value if isinstance(value, str) else str(value) if isinstance(value, int | float) else ""
        try:
            rejects(text)
        except ValueError:
            raise ConfigError(f"{source}: reject must be none, auto or a threshold (a number), got {value!r}") from None
        return text
    if key in CHOICES:
        if value not in CHOICES[key]:
            raise ConfigError(f"{source}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
        return value
    kind = _TYPES.get(key, str)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if kind is float:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
            raise ConfigError(f"{source}: {key} must be a number of at least 0, got {value!r}")
        return float(value)
    if kind is int:
        if value is None and key in _OPTIONAL:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be a whole number, got {value!r}")
        if value < _MINIMUM.get(key, 0):
            raise ConfigError(f"{source}: {key} must be at least {_MINIMUM[key]}, got {value}")
        return value
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{source}: {key} must be text, got {value!r}")
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    """Validated ``{field: value}`` from a YAML mapping. Raises ConfigError."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    known = {f.name for f in fields(Settings)}
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key in RENAMED_KEYS:
            raise ConfigError(f"{path}: the key {raw_key!r} is now {RENAMED_KEYS[key]!r}", hint="rename it in the file")
        if key not in known:
            names = ", ".join(sorted(k.replace("_", "-") for k in known))
            raise ConfigError(f"{path}: unknown key {raw_key!r}", hint=f"valid keys: {names}")
        out[key] = _check(key, value, str(path))
    if isinstance(out.get("model"), str) and out["model"] and not Path(out["model"]).is_absolute():
        out["model"] = str((path.parent / Path(out["model"]).expanduser()).resolve())
    return out


def load_settings(config: Path | None, overrides: dict[str, Any]) -> Settings:
    """Defaults, then the config file, then ``overrides`` (flags given; None = not given)."""
    if config is None and os.environ.get("EMDCLI_CONFIG"):
        config = Path(os.environ["EMDCLI_CONFIG"])
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"config file not found: {config}")
        values = read_config_file(config)
    else:
        path = default_config_path()
        values = read_config_file(path) if path.is_file() else {}
    for key, value in overrides.items():
        if value is not None:
            values[key] = _check(key, value, "command line")
    return replace(Settings(), **values)

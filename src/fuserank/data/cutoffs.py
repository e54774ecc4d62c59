"""Cut-offs: the moments at which the system is asked to predict, built in one place.

A cut-off holds what stage 1 may learn from (history), what it must predict (targets), and each
query's reference time: nothing after it counts for that user's statistics and popularity
candidates. The protocol, tuning, export and the Dask path all consume these values.

Two protocols (split.protocol):
- leave_last_out: per user, the last interaction is the test target, the one before it the
  validation target. A query's reference time is the user's newest history interaction. The
  history still holds other users' later interactions, which the collaborative models learn
  from (as every peer does under this protocol); statistics do not count them.
- global_time: a validation cut time and a test cut time shared by all users. A cut-off's
  history is everything before its cut; a user's first interaction in [valid cut, test cut) is
  their validation target and their first at or after the test cut their test target. Nothing
  after a cut exists for its queries; the reference time is the cut time. Users with no history
  before a cut are cold users, kept apart from the main metrics.

Ranker labels come from cut-offs further back, built the same way: under leave_last_out by
stepping back through each user's train interactions, under global_time by cut times that step
back through the train interactions by the share of interactions between the two cuts.

The cold-item protocol (split.cold_items > 0) works on top of either: a share of the items is
cold (`select_cold_items`), and every interaction with a cold item leaves every cut-off's
history, so no model, statistic or candidate source learns from one; only test targets may name
a cold item. The ranker still needs positives that look like that, so each earlier cut-off
(labels, validation) also hides another share of items, chosen by the hash salted with the
cut-off's name, from its own history while keeping its targets on them (`mask_cold_items`).
At those earlier cut-offs the cold items are outside the catalog (`Cutoff.absent`): offered
there, they would be zero-interaction candidates that can never be the answer, and the ranker
would learn a lower chance for every zero-interaction item than the test cut-off has.

Every cut-off also carries the protocol's shared history: the interactions that all of its
cut-offs have in their histories (under leave_last_out without cold items, the earliest label
cut-off's history). A model fitted on it has seen nothing that any cut-off predicts or hides,
so each cut-off's sequence model may continue from it (sequence.refit).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.config import SplitConfig
from fuserank.data.split import Split, holdout_labels, leave_last_out, sort_interactions
from fuserank.retrieval.popularity import reference_times


class ProtocolError(ValueError):
    """The data and split settings give the protocol nothing to evaluate, or contradict each other."""


@dataclass(frozen=True)
class Cutoff:
    """One cut-off.

    Attributes:
        name: what it is for, e.g. "ranker labels 1", "validation", "test".
        history: interactions stage 1 may learn from (sorted, data.split order).
        targets: the interactions to predict, each of a user with history.
        ref_times: schema.REF_TIMES, one row per target user.
        shared_history: the rows of `history` every cut-off of the protocol has
            (`share_history`); None for a cut-off built on its own (export's serving cut-off).
        absent: items outside this cut-off's catalog, which no candidate may name: under the
            cold-item protocol, the cold items at the label and validation cut-offs, where no
            target may name one (empty otherwise).
    """

    name: str
    history: pl.DataFrame
    targets: pl.DataFrame
    ref_times: pl.DataFrame
    shared_history: pl.DataFrame | None = None
    absent: frozenset[str] = frozenset()

    @property
    def users(self) -> list[str]:
        """The users queried (one reference time each), sorted."""
        return self.ref_times[schema.USER_ID].unique().sort().to_list()


@dataclass(frozen=True)
class Cutoffs:
    """Every cut-off of one evaluation.

    Attributes:
        protocol: split.protocol.
        labels: ranker-training cut-offs, newest first (the last one has the shortest history).
        valid: validation (early stopping, tuning).
        test: the one evaluation on test.
        cold_test: test targets of users with no history before the test cut (global_time
            only; empty under leave_last_out).
        interactions: every interaction, sorted (export serves from all of them).
        cold_items: the cold items of the cold-item protocol (empty when split.cold_items = 0):
            none of their interactions is in any history.
    """

    protocol: str
    labels: tuple[Cutoff, ...]
    valid: Cutoff
    test: Cutoff
    cold_test: pl.DataFrame
    interactions: pl.DataFrame
    cold_items: frozenset[str] = frozenset()


def build_cutoffs(interactions: pl.DataFrame, split: SplitConfig) -> Cutoffs:
    """The cut-offs of `split.protocol` over `interactions`.

    Raises:
        ProtocolError: no user can be evaluated (with what to change), or the cut times are not
            valid_time < test_time.
    """
    if split.protocol == "global_time":
        cutoffs = global_time_cutoffs(interactions, split)
    else:
        cutoffs = cutoffs_from_split(leave_last_out(interactions, split.min_interactions), split)
    if split.cold_items > 0:
        cutoffs = mask_cold_items(cutoffs, split)
    if cutoffs.test.targets.is_empty():
        raise ProtocolError(_nobody_to_evaluate(interactions, split))
    if not cutoffs.labels:
        raise ProtocolError(NO_LABELS)
    return share_history(cutoffs)


def share_history(cutoffs: Cutoffs) -> Cutoffs:
    """`cutoffs` with each cut-off's shared_history set: the (user, item, timestamp) rows that
    every cut-off's history holds, in the order of the shortest history."""
    every = [*cutoffs.labels, cutoffs.valid, cutoffs.test]
    keys = [schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP]
    shared = min(every, key=lambda cutoff: cutoff.history.height).history
    for cutoff in every:
        shared = shared.join(cutoff.history.select(keys).unique(), on=keys, how="semi", maintain_order="left")
    return replace(
        cutoffs,
        labels=tuple(replace(cutoff, shared_history=shared) for cutoff in cutoffs.labels),
        valid=replace(cutoffs.valid, shared_history=shared),
        test=replace(cutoffs.test, shared_history=shared),
    )


NO_LABELS = ("no user has enough train interactions to give the ranker a label; lower split.label_window (or "
             "split.label_share), or raise split.min_interactions")


def _nobody_to_evaluate(interactions: pl.DataFrame, split: SplitConfig) -> str:
    if split.protocol == "global_time":
        return nobody_at_test_cut(interactions[schema.USER_ID].n_unique())
    return too_short(int(interactions.group_by(schema.USER_ID).len()["len"].max() or 0), split)


def nobody_at_test_cut(users: int) -> str:
    """Why global time evaluates nobody, among `users` users."""
    return (f"no user has both an interaction before the test cut and one after it ({users:,} users); set "
            f"split.test_quantile or split.test_time so that returning users fall on both sides")


def too_short(most: int, split: SplitConfig) -> str:
    """Why leave-last-out evaluates nobody, when the longest user history has `most` rows."""
    return (f"no user has split.min_interactions = {split.min_interactions} interactions (the most any "
            f"user has is {most}), so nobody can be evaluated; lower split.min_interactions or add data")


def cutoffs_from_split(split: Split, config: SplitConfig, keep_empty: bool = False) -> Cutoffs:
    """Leave-last-out cut-offs of a per-user split (leave_last_out, or a random split ordered as
    time): labels step back through train, validation is (train, valid), test is (train +
    valid, test); each query's reference time is the user's newest history interaction.

    The label cut-offs stop at the first without a target; with `keep_empty` there are always
    split.label_cutoffs of them (for a user partition's share of a split, where the whole
    decides where they stop: jobs/distributed_cutoffs.py)."""
    labels = []
    history = split.train
    for j in range(1, config.label_cutoffs + 1):
        history, targets = holdout_labels(history, config.label_window, config.label_share)
        if targets.is_empty() and not keep_empty:
            break
        labels.append(_per_user_cutoff(f"ranker labels {j}", history, targets))
    test_history = sort_interactions(pl.concat([split.train, split.valid]))
    return Cutoffs(
        protocol="leave_last_out",
        labels=tuple(labels),
        valid=_per_user_cutoff("validation", split.train, split.valid),
        test=_per_user_cutoff("test", test_history, split.test),
        cold_test=split.test.clear(),
        interactions=sort_interactions(pl.concat([test_history, split.test])),
    )


def _per_user_cutoff(name: str, history: pl.DataFrame, targets: pl.DataFrame) -> Cutoff:
    users = targets[schema.USER_ID].unique().sort().to_list()
    return Cutoff(name, history, targets, reference_times(history, users))


def serving_ref_times(history: pl.DataFrame, users: list[str], protocol: str) -> pl.DataFrame:
    """Reference times of export queries (every interaction is history), by the rule the model
    was trained with: each user's newest interaction (leave_last_out), or the newest interaction
    in the data, the "now" of a global cut (global_time). schema.REF_TIMES, in `users` order."""
    if protocol == "global_time":
        now = int(history[schema.TIMESTAMP].max()) if history.height else 0
        return pl.DataFrame({schema.USER_ID: pl.Series(users, dtype=pl.String),
                             schema.REF_TIME: pl.Series([now] * len(users), dtype=pl.Int64)})
    return reference_times(history, users)


def serving_cutoff(history: pl.DataFrame, users: list[str], protocol: str) -> Cutoff:
    """The export's cut-off: every known interaction is history, no targets, and each user's
    reference time by the rule the run was trained with (`serving_ref_times`)."""
    targets = history.clear().select(list(schema.INTERACTIONS))
    return Cutoff("serving", history, targets, serving_ref_times(history, users, protocol))


@dataclass(frozen=True)
class TimeOrder:
    """What the global-time cuts read of all timestamps, however they are held (here in one
    array, `time_order`; on a cluster, spread over partitions: jobs/distributed_cutoffs.py).

    Attributes:
        n: the number of timestamps.
        nth: the k-th smallest (0-based).
        before: how many are smaller than a time.
    """

    n: int
    nth: Callable[[int], int]
    before: Callable[[int], int]


def time_order(times: np.ndarray) -> TimeOrder:
    """The `TimeOrder` of timestamps held in one array."""
    ordered = np.sort(times)
    return TimeOrder(len(ordered), lambda k: int(ordered[k]), lambda t: int(np.searchsorted(ordered, t)))


def cut_times(interactions: pl.DataFrame, split: SplitConfig) -> tuple[int, int]:
    """(valid cut, test cut) in seconds: split.valid_time and split.test_time, or the
    split.valid_quantile and split.test_quantile of all timestamps."""
    return quantile_cuts(time_order(interactions[schema.TIMESTAMP].to_numpy()), split)


def quantile_cuts(order: TimeOrder, split: SplitConfig) -> tuple[int, int]:
    """`cut_times` from a `TimeOrder`; a quantile is numpy's method="higher" one."""
    if (split.valid_time is None) != (split.test_time is None):
        raise ProtocolError("split.valid_time and split.test_time must be set together (or both left unset)")
    if split.valid_time is not None and split.test_time is not None:
        valid, test = int(split.valid_time), int(split.test_time)
    else:
        # np.quantile(times, q, method="higher") is the ceil((n - 1) q)-th smallest.
        valid, test = (order.nth(int(np.ceil((order.n - 1) * q))) for q in (split.valid_quantile, split.test_quantile))
    if not valid < test:
        raise ProtocolError(f"the validation cut ({valid}) must come before the test cut ({test}): check "
                         f"split.valid_time/test_time or split.valid_quantile/test_quantile")
    return valid, test


def label_cuts(order: TimeOrder, valid_cut: int, test_cut: int, most: int) -> list[int]:
    """The ranker-label cut times, newest first, at most `most`: they step back from the
    validation cut by the share of interactions between the two cuts, and stop before a cut
    would not be earlier than the one after it. A caller keeps them up to the first whose
    cut-off has no target."""
    share = (order.before(test_cut) - order.before(valid_cut)) / max(order.n, 1)
    level = order.before(valid_cut) / max(order.n, 1)
    cuts, upper = [], valid_cut
    for _ in range(most):
        level -= share
        if level <= 0 or share <= 0:
            break
        cut = order.nth(int(level * order.n))
        if cut >= upper:
            break
        cuts.append(cut)
        upper = cut
    return cuts


def global_time_cutoffs(interactions: pl.DataFrame, split: SplitConfig) -> Cutoffs:
    """Global-time cut-offs (see the module docstring)."""
    ordered = sort_interactions(interactions)
    order = time_order(ordered[schema.TIMESTAMP].to_numpy())
    valid_cut, test_cut = quantile_cuts(order, split)
    return cutoffs_at_times(ordered, valid_cut, test_cut, label_cuts(order, valid_cut, test_cut, split.label_cutoffs))


def cutoffs_at_times(ordered: pl.DataFrame, valid_cut: int, test_cut: int, cuts: Sequence[int],
                     keep_empty: bool = False) -> Cutoffs:
    """Global-time cut-offs of sorted interactions at given cut times (`label_cuts` for the
    labels). The label cut-offs stop at the first without a target; with `keep_empty` there is
    one per cut (for a user partition's share, where the whole decides where they stop)."""
    labels, upper = [], valid_cut
    for j, cut in enumerate(cuts, start=1):
        found = _time_cutoff(f"ranker labels {j}", ordered, cut, upper)
        if found.targets.is_empty() and not keep_empty:
            break
        labels.append(found)
        upper = cut
    test = _time_cutoff("test", ordered, test_cut, None)
    everyone = ordered.filter(pl.col(schema.TIMESTAMP) >= test_cut)
    first_after = everyone.group_by(schema.USER_ID, maintain_order=True).head(1)
    cold = first_after.join(test.targets, on=schema.USER_ID, how="anti")
    return Cutoffs(
        protocol="global_time",
        labels=tuple(labels),
        valid=_time_cutoff("validation", ordered, valid_cut, test_cut),
        test=test,
        cold_test=cold,
        interactions=ordered,
    )


def _time_cutoff(name: str, ordered: pl.DataFrame, cut: int, upper: int | None) -> Cutoff:
    """History: every interaction before `cut`; targets: each user with history's first
    interaction in [cut, upper) (upper None: no bound); reference time: the cut."""
    time = pl.col(schema.TIMESTAMP)
    history = ordered.filter(time < cut)
    window = ordered.filter((time >= cut) & (time < upper) if upper is not None else time >= cut)
    targets = (
        window.join(history.select(schema.USER_ID).unique(), on=schema.USER_ID, how="semi")
        .group_by(schema.USER_ID, maintain_order=True)
        .head(1)
    )
    targets = sort_interactions(targets)
    users = targets[schema.USER_ID].unique().sort()
    ref_times = pl.DataFrame({schema.USER_ID: users, schema.REF_TIME: pl.Series([cut] * len(users), dtype=pl.Int64)})
    return Cutoff(name, history, targets, ref_times)


def select_cold_items(interactions: pl.DataFrame, share: float, rule: str = "hash", seed: int = 0,
                      salt: str = "") -> frozenset[str]:
    """The cold items: round(`share` x the items that have interactions), at least one.

    Args:
        interactions: schema.INTERACTIONS rows, sorted as data.split sorts them.
        share: in (0, 1).
        rule: "hash": the items whose blake2b hash of (seed, salt, item id) is smallest, so an
            item's fate does not depend on the other items or the row order; "latest": the items
            whose first interaction is latest (ties: the later first row).
        seed, salt: what the hash is keyed with ("hash" only).
    """
    if not 0 < share < 1:
        raise ValueError(f"the cold share must be in (0, 1), got {share}")
    first = (interactions.with_row_index("_row").group_by(schema.ITEM_ID)
             .agg(pl.col(schema.TIMESTAMP).min(), pl.col("_row").min()))
    n = max(1, round(share * first.height))
    if rule == "latest":
        chosen = first.sort([schema.TIMESTAMP, "_row"], descending=True).head(n)[schema.ITEM_ID]
        return frozenset(chosen.to_list())
    if rule != "hash":
        raise ValueError(f"split.cold_rule: unknown rule {rule!r}; use 'hash' or 'latest'")
    def key(item: str) -> bytes:
        return hashlib.blake2b(f"{seed}\x1f{salt}\x1f{item}".encode(), digest_size=8).digest()

    return frozenset(sorted(first[schema.ITEM_ID].to_list(), key=key)[:n])


def mask_cold_items(cutoffs: Cutoffs, split: SplitConfig) -> Cutoffs:
    """The cold-item protocol over `cutoffs` (split.cold_items > 0; see the module docstring).

    Every cut-off's history loses the interactions with cold items. The test cut-off keeps its
    targets on cold items (the cold slice); the label and validation cut-offs drop theirs (a
    cold item trains nothing) and each hides a further share of the remaining items, keyed by
    its name, from its history while keeping its targets on them: cold-like positives for the
    ranker and for early stopping. The cold items leave those cut-offs' catalogs (`absent`), so
    every zero-interaction candidate there is a hidden item, which may be the answer, as at
    test. A query whose history becomes empty is dropped; reference times are recomputed from
    the masked history (leave_last_out) or stay the cut (global_time).
    """
    cold = select_cold_items(cutoffs.interactions, split.cold_items, split.cold_rule, split.cold_seed)
    warm = cutoffs.interactions.filter(~pl.col(schema.ITEM_ID).is_in(list(cold)))

    def earlier(cutoff: Cutoff) -> Cutoff:
        hidden = select_cold_items(warm, split.cold_items, "hash", split.cold_seed, salt=cutoff.name)
        return _masked(cutoff, cold | hidden, cold, cutoffs.protocol)

    return replace(
        cutoffs,
        labels=tuple(earlier(c) for c in cutoffs.labels),
        valid=earlier(cutoffs.valid),
        test=_masked(cutoffs.test, cold, frozenset(), cutoffs.protocol),
        cold_items=cold,
    )


def _masked(cutoff: Cutoff, hidden: frozenset[str], drop_targets: frozenset[str], protocol: str) -> Cutoff:
    """`cutoff` with the `hidden` items' interactions out of its history, and the targets on
    `drop_targets` removed and those items out of its catalog; only users with history left
    keep their queries."""
    item = pl.col(schema.ITEM_ID)
    history = cutoff.history.filter(~item.is_in(list(hidden)))
    targets = cutoff.targets.filter(~item.is_in(list(drop_targets)))
    targets = targets.join(history.select(schema.USER_ID).unique(), on=schema.USER_ID, how="semi")
    users = targets[schema.USER_ID].unique().sort().to_list()
    if protocol == "global_time":
        wanted = pl.DataFrame({schema.USER_ID: pl.Series(users, dtype=pl.String)})
        ref_times = cutoff.ref_times.join(wanted, on=schema.USER_ID, how="semi")
    else:
        ref_times = reference_times(history, users)
    return Cutoff(cutoff.name, history, targets, ref_times, absent=drop_targets)

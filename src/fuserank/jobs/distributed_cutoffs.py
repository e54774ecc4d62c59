"""A protocol's cut-offs built on the Dask workers, one share per user partition
(`distributed_data.UserParts`), so that the driver holds no history, target or reference time.

Under leave_last_out every cut-off is a per-user cut, so a partition's share is
`data.cutoffs.build_cutoffs` of its own users' interactions, with one exception: the label
cut-offs stop where no user of the whole data has a target, which the driver decides from the
partitions' target counts. Under global_time the cut times come from all the timestamps: the
driver finds each quantile by bisection on the time, counting on the partitions
(`cluster_time_order`), and each partition then cuts its users at those times. The shares of a
cut-off, concatenated in partition order, are exactly that cut-off of the whole (history,
targets, reference times and shared history).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from fuserank import schema
from fuserank.config import SplitConfig
from fuserank.data.cutoffs import (
    NO_LABELS, Cutoff, Cutoffs, ProtocolError, TimeOrder, cutoffs_at_times, cutoffs_from_split, label_cuts,
    nobody_at_test_cut, quantile_cuts, share_history, too_short,
)
from fuserank.data.split import leave_last_out
from fuserank.jobs.distributed_data import UserParts
from fuserank.jobs.distributed_frames import ClusterCutoff


@dataclass(frozen=True)
class CutoffShares:
    """A protocol's cut-offs held on the workers.

    Attributes:
        bounds: the user partitions' bounds (`UserParts.bounds`).
        futures: one `distributed.Future` per partition, of its share (a `Cutoffs` over the
            partition's users; `Cutoffs.interactions` is theirs).
        names: the cut-offs' names: the label cut-offs newest first, then validation and test.
        targets: by name, each cut-off's targets in each partition.
    """

    bounds: list[str]
    futures: list[Any]
    names: list[str]
    targets: dict[str, list[int]]


def cutoff_shares(client: Any, parts: UserParts, split: SplitConfig) -> CutoffShares:
    """`data.cutoffs.build_cutoffs` of the interactions in `parts`, built where they lie.

    Raises:
        ProtocolError: as `build_cutoffs` raises it (nobody to evaluate, no ranker label, cut
            times out of order), or under the cold-item protocol, which this does not build
            yet (build it on the driver).
    """
    if split.cold_items > 0:
        raise ProtocolError("cut-offs on the workers are not built under the cold-item protocol (split.cold_items) "
                            "so far; build them on the driver (data.cutoffs.build_cutoffs)")
    if split.protocol == "global_time":
        order = cluster_time_order(client, parts)
        valid_cut, test_cut = quantile_cuts(order, split)
        cuts = label_cuts(order, valid_cut, test_cut, split.label_cutoffs)
        shares = [client.submit(_time_share, f, valid_cut, test_cut, cuts, pure=False) for f in parts.futures]
    else:
        shares = [client.submit(_last_out_share, f, split, pure=False) for f in parts.futures]
    counts = client.gather([client.submit(_counts, s, pure=False) for s in shares])
    labels, valid, test, most = (list(x) for x in zip(*counts, strict=True))
    if sum(test) == 0:
        raise ProtocolError(_nobody(split, sum(parts.users), max(most, default=0)))
    per_label = [list(c) for c in zip(*labels, strict=True)]  # by label cut-off, by partition
    kept = next((j for j, n in enumerate(per_label) if sum(n) == 0), len(per_label))
    if kept == 0:
        raise ProtocolError(NO_LABELS)
    futures = [client.submit(_keep_labels, s, kept, pure=False) for s in shares]
    names = [f"ranker labels {j}" for j in range(1, kept + 1)] + ["validation", "test"]
    return CutoffShares(parts.bounds, futures, names, dict(zip(names, [*per_label[:kept], valid, test], strict=True)))


def _nobody(split: SplitConfig, users: int, most: int) -> str:
    return nobody_at_test_cut(users) if split.protocol == "global_time" else too_short(most, split)


def cluster_time_order(client: Any, parts: UserParts) -> TimeOrder:
    """The `TimeOrder` of the timestamps in `parts`: counts come from the partitions, and the
    k-th smallest is found by bisection on the time (a few dozen rounds of counts)."""
    def count(t: int, side: str) -> int:
        return sum(client.gather([client.submit(_count, f, t, side, pure=False) for f in parts.futures]))

    ranges = client.gather([client.submit(_time_range, f, pure=False) for f in parts.futures])
    low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)

    def nth(k: int) -> int:
        lo, hi = low, high  # the answer lies in [lo, hi]: the smallest t with k + 1 times <= t
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if count(mid, "right") > k else (mid + 1, hi)
        return lo

    return TimeOrder(sum(parts.rows), nth, lambda t: count(t, "left"))


def _time_range(frame: pl.DataFrame) -> tuple[int, int]:
    times = frame[schema.TIMESTAMP]
    return int(times.min()), int(times.max())


def _count(frame: pl.DataFrame, t: int, side: str) -> int:
    """Timestamps smaller than `t` ("left") or not larger ("right")."""
    times = frame[schema.TIMESTAMP]
    return int((times < t).sum() if side == "left" else (times <= t).sum())


def _last_out_share(interactions: pl.DataFrame, split: SplitConfig) -> Cutoffs:
    return cutoffs_from_split(leave_last_out(interactions, split.min_interactions), split, keep_empty=True)


def _time_share(interactions: pl.DataFrame, valid_cut: int, test_cut: int, cuts: list[int]) -> Cutoffs:
    return cutoffs_at_times(interactions, valid_cut, test_cut, cuts, keep_empty=True)


def _counts(share: Cutoffs) -> tuple[list[int], int, int, int]:
    """Targets of each label cut-off, of validation and of test, and the longest user history."""
    most = share.interactions.group_by(schema.USER_ID).len()["len"].max() if share.interactions.height else 0
    return ([c.targets.height for c in share.labels], share.valid.targets.height, share.test.targets.height,
            int(most or 0))


def _keep_labels(share: Cutoffs, kept: int) -> Cutoffs:
    return share_history(replace(share, labels=share.labels[:kept]))


def cutoff_of(share: Cutoffs, name: str) -> Cutoff:
    """The cut-off called `name` in a partition's share."""
    return next(c for c in (*share.labels, share.valid, share.test) if c.name == name)


def cluster_cutoff(client: Any, shares: CutoffShares, name: str, only: Sequence[int] | None = None) -> ClusterCutoff:
    """The cut-off `name` for `distributed_frames.frames_on_workers`: its history and shared
    history put together on a worker from the partitions' shares, and each partition's targets
    and reference times left where they lie (None where the partition has no target); `only`:
    those of these partitions alone, in this order (a rebuild's)."""
    history, shared = (client.submit(_whole, shares.futures, name, field, pure=False)
                       for field in ("history", "shared_history"))
    picked = range(len(shares.futures)) if only is None else only
    targets, ref_times = ([None if shares.targets[name][p] == 0 else
                           client.submit(_field, shares.futures[p], name, field, pure=False) for p in picked]
                          for field in ("targets", "ref_times"))
    return ClusterCutoff(name, history, shared, frozenset(), targets, ref_times)


def _field(share: Cutoffs, name: str, field: str) -> pl.DataFrame:
    return getattr(cutoff_of(share, name), field)


def _whole(shares: list[Cutoffs], name: str, field: str) -> pl.DataFrame:
    return pl.concat([_field(share, name, field) for share in shares], how="vertical", rechunk=True)


def training_items(client: Any, shares: CutoffShares) -> pl.Series:
    """The items of the validation cut-off's history, over every partition: what train-evaluate
    fits the content embeddings' statistics on (`encoders.content.encode_content`)."""
    found = client.gather([client.submit(_valid_items, f, pure=False) for f in shares.futures])
    return pl.concat(found).unique().sort()


def _valid_items(share: Cutoffs) -> pl.Series:
    return share.valid.history[schema.ITEM_ID].unique()

"""A protocol's cut-offs built on the Dask workers, one share per user partition
(`distributed_data.UserParts`), so that the driver holds no history, target or reference time.

Under leave_last_out every cut-off is a per-user cut, so a partition's share is
`data.cutoffs.build_cutoffs` of its own users' interactions, with one exception: the label
cut-offs stop where no user of the whole data has a target, which the driver decides from the
partitions' target counts. The shares of a cut-off, concatenated in partition order, are then
exactly that cut-off of the whole (history, targets, reference times and shared history).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from fuserank import schema
from fuserank.config import SplitConfig
from fuserank.data.cutoffs import (
    NO_LABELS, Cutoff, Cutoffs, ProtocolError, cutoffs_from_split, share_history, too_short,
)
from fuserank.data.split import leave_last_out
from fuserank.jobs.distributed_data import UserParts


@dataclass(frozen=True)
class CutoffShares:
    """A protocol's cut-offs held on the workers.

    Attributes:
        bounds: the user partitions' bounds (`UserParts.bounds`).
        futures: one `distributed.Future` per partition, of its share (a `Cutoffs` over the
            partition's users; `Cutoffs.interactions` is theirs).
        names: the cut-offs' names: the label cut-offs newest first, then validation and test.
        targets: each cut-off's targets, summed over the partitions, by name.
    """

    bounds: list[str]
    futures: list[Any]
    names: list[str]
    targets: dict[str, int]


def cutoff_shares(client: Any, parts: UserParts, split: SplitConfig) -> CutoffShares:
    """`data.cutoffs.build_cutoffs` of the interactions in `parts`, built where they lie.

    Raises:
        ProtocolError: as `build_cutoffs` raises it (nobody to evaluate, no ranker label), or
            a protocol this does not build yet (global_time, cold items): build those on the
            driver.
    """
    if split.protocol != "leave_last_out" or split.cold_items > 0:
        raise ProtocolError("cut-offs on the workers are built for split.protocol=leave_last_out without "
                            "split.cold_items so far; build the others on the driver (data.cutoffs.build_cutoffs)")
    shares = [client.submit(_share, f, split, pure=False) for f in parts.futures]
    counts = client.gather([client.submit(_counts, s, pure=False) for s in shares])
    labels, valid, test, most = (list(x) for x in zip(*counts, strict=True))
    if sum(test) == 0:
        raise ProtocolError(too_short(max(most, default=0), split))
    per_label = [sum(c) for c in zip(*labels, strict=True)]
    kept = next((j for j, n in enumerate(per_label) if n == 0), len(per_label))
    if kept == 0:
        raise ProtocolError(NO_LABELS)
    futures = [client.submit(_keep_labels, s, kept, pure=False) for s in shares]
    names = [f"ranker labels {j}" for j in range(1, kept + 1)] + ["validation", "test"]
    return CutoffShares(parts.bounds, futures, names,
                        dict(zip(names, [*per_label[:kept], sum(valid), sum(test)], strict=True)))


def _share(interactions: pl.DataFrame, split: SplitConfig) -> Cutoffs:
    return cutoffs_from_split(leave_last_out(interactions, split.min_interactions), split, keep_empty=True)


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

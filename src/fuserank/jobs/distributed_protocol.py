"""train-evaluate from interactions the workers read (`distributed_data.read_user_parts`): the
cut-offs' shares (`distributed_cutoffs.cutoff_shares`) feed the frames, the ranker, the scores
and the evaluation inputs where they lie, so the driver holds no interaction.

Each cut-off's history is put together on a worker, stage 1 is fitted there and copied to
every worker, and each partition's candidates and features are built from the partition's
targets and reference times (`distributed_frames.frames_on_workers`). The baselines, the cold
users and the slices are built per partition too, on the worker that holds the test
cut-off's whole history (the most-popular counts and the slices' cold targets read every
user's interactions). What comes back: per-user stage-1 counts, the targets, the slices'
rows, and each system's metric columns one at a time (for the means) and the few that the
intervals and slices read; every system's per-user rows and the test's top `eval.top_k` lists
stay on the workers until the outputs are written from them, a partition at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.config import RunConfig
from fuserank.data.cutoffs import Cutoffs
from fuserank.encoders.base import Embeddings
from fuserank.evaluation.protocol import EvaluationInputs, ProtocolResult, Trained, evaluate, fit_note, local_inputs
from fuserank.evaluation.scoring import concat_scored
from fuserank.jobs.distributed import fit_ranker_parts
from fuserank.jobs.distributed_cutoffs import CutoffShares, cluster_cutoff
from fuserank.jobs.distributed_frames import (
    ClusterCutoff,
    FitOnWorker,
    Parts,
    frames_on_workers,
    held_scored,
    kept,
    rebuilder,
    scores_on_workers,
)
from fuserank.progress import step
from fuserank.schema import QUERY


def run_protocol_on_shares(client: Any, shares: CutoffShares, item_ids: Sequence[str],
                           content: Mapping[str, Embeddings], config: RunConfig) -> ProtocolResult:
    """`protocol.run_protocol` of cut-offs held on the workers as shares."""
    trained, test = train_on_shares(client, shares, item_ids, content, config)
    with step("baselines (workers)") as s:
        inputs = inputs_on_workers(client, shares, test, item_ids, content, config)
        s.done(f"{len(inputs.baselines)} baselines, {int(inputs.counts['n_test_users']):,} test users")
    return evaluate(trained, inputs, len(item_ids), config)


def train_on_shares(client: Any, shares: CutoffShares, item_ids: Sequence[str], content: Mapping[str, Embeddings],
                    config: RunConfig) -> tuple[Trained, ClusterCutoff]:
    """`protocol.train_on_cluster` from the shares: the ranker trained from every label
    cut-off's frames, validation and test scored where they lie. Returns also the test
    cut-off on the cluster, whose whole history the evaluation inputs read."""
    fit = FitOnWorker(item_ids, content)

    def on_workers(name: str, query: str | None = None) -> tuple[Parts, list[str], ClusterCutoff]:
        with step(f"stage 1 [{name}]") as s:
            cutoff = cluster_cutoff(client, shares, name)
            # A partition lost with a worker: built again from the shares, which Dask computes
            # again from the file where they were lost too.
            rebuild = rebuilder(client, config, fit, lambda lost: cluster_cutoff(client, shares, name, lost), None,
                                query)
            parts, names = frames_on_workers(client, config, fit, cutoff, None, query, rebuild)
            s.done(f"{sum(shares.targets[name]):,} targets, {parts.height:,} candidates x {len(names)} features "
                   "(on the workers)")
        return parts, names, cutoff

    labels = shares.names[:-2]  # then validation and test
    train = [on_workers(name, f"#{j}")[0] for j, name in enumerate(labels, start=1)]
    valid, names, valid_cutoff = on_workers(shares.names[-2])
    test, _, test_cutoff = on_workers(shares.names[-1])
    with step("train ranker") as s:
        ranker, queries = fit_ranker_parts(client, train, valid, names, config.ranker, config.seed, group=QUERY,
                                           n_partitions=config.dask.ranker_partitions,
                                           time_out=config.dask.ranker_time_out, attempts=config.dask.ranker_attempts)
        s.done(fit_note(ranker))
    rows = sum(t.height for t in train)
    del train
    ks, n, slots = config.eval.ks, config.retrieval.ann_candidates, config.slots.new_items
    trained = Trained(ranker, names, rows, queries,
                      scores_on_workers(client, valid, valid_cutoff.targets, ranker, ks, n, 0, slots),
                      scores_on_workers(client, test, test_cutoff.targets, ranker, ks, n, config.eval.top_k, slots))
    return trained, test_cutoff


def inputs_on_workers(client: Any, shares: CutoffShares, test: ClusterCutoff, item_ids: Sequence[str],
                      content: Mapping[str, Embeddings], config: RunConfig) -> EvaluationInputs:
    """`protocol.local_inputs` built per partition, each next to the test cut-off's whole
    history; a partition's random lists start where its users start among all the test users
    (partitions follow each other in user order), so they are those of the whole."""
    users = client.gather([client.submit(_test_users, f, pure=False) for f in shares.futures])
    offsets = np.concatenate([[0], np.cumsum(users)[:-1]]).astype(int).tolist()
    text = {"text": content["text"]} if "text" in content else {}
    shared = kept(client, (list(item_ids), text, config))
    inputs = [client.submit(_part_inputs, test.history, share, offset, shared, pure=False)
              for share, offset in zip(shares.futures, offsets, strict=True)]
    # The baselines' per-user rows stay on the workers (`distributed_frames.held_scored`).
    parts = client.gather([client.submit(_without_baselines, f, pure=False) for f in inputs])
    names = client.submit(_baseline_names, inputs[0], pure=False).result()
    baselines = {name: held_scored(client, [client.submit(_baseline, f, name, pure=False) for f in inputs])
                 for name in names}
    colds = [p.cold for p in parts if p.cold is not None]
    return EvaluationInputs({key: sum(p.counts[key] for p in parts) for key in parts[0].counts},
                            pl.concat([p.valid_targets for p in parts]), pl.concat([p.test_targets for p in parts]),
                            baselines, concat_scored(colds) if colds else None,
                            pl.concat([p.slices for p in parts]).sort(schema.USER_ID, maintain_order=True))


def _part_inputs(history: pl.DataFrame, share: Cutoffs, offset: int, shared: tuple) -> EvaluationInputs:
    """`protocol.local_inputs` of one partition's share, its test cut-off reading the whole
    test `history` (the most-popular counts, the slices' cold targets, the cold users' lists)."""
    item_ids, content, config = shared
    whole = replace(share, test=replace(share.test, history=history))
    return local_inputs(whole, item_ids, content, config, offset=offset)


def _without_baselines(inputs: EvaluationInputs) -> EvaluationInputs:
    return replace(inputs, baselines={})


def _baseline_names(inputs: EvaluationInputs) -> list[str]:
    return list(inputs.baselines)


def _baseline(inputs: EvaluationInputs, name: str) -> Any:
    return inputs.baselines[name]


def _test_users(share: Cutoffs) -> int:
    return len(share.test.users)

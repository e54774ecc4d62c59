"""The stage pipeline's last steps against a user-by-user reading, on random frames with ties."""

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.pipeline import label_candidates, rank_candidates

U, I = schema.USER_ID, schema.ITEM_ID


def random_candidates(rng, n=300):
    return pl.DataFrame({U: [f"u{u}" for u in rng.integers(0, 25, n)],  # users interleaved, not sorted
                         I: [f"i{i}" for i in rng.integers(0, 40, n)]})


@pytest.mark.parametrize("seed", [0, 1])
def test_rank_candidates_is_each_users_best_scores_ties_in_frame_order(seed):
    rng = np.random.default_rng(seed)
    frame = random_candidates(rng)
    scores = rng.integers(0, 5, frame.height).astype(np.float32)  # many ties
    for k in (1, 3, 50):
        ranked = rank_candidates(frame, scores, k)
        want = []
        for user in sorted(set(frame[U].to_list())):
            rows = [j for j in range(frame.height) if frame[U][j] == user]
            rows.sort(key=lambda j: (-scores[j], j))
            want += [(user, frame[I][j], rank, float(scores[j])) for rank, j in enumerate(rows[:k], 1)]
        assert ranked.rows() == want
        assert ranked.schema == pl.Schema(schema.RANKED_LIST)


def test_labels_mark_targets_and_a_serving_cutoff_labels_nothing():
    frame = random_candidates(np.random.default_rng(2))
    targets = frame.sample(20, seed=3)
    labelled = label_candidates(frame, targets)
    hits = set(targets.iter_rows())
    assert labelled[schema.LABEL].to_list() == [int(row in hits) for row in frame.iter_rows()]
    none = label_candidates(frame, targets.head(0))
    assert none.schema == labelled.schema and none[schema.LABEL].to_list() == [0] * frame.height

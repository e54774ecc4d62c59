"""fuse: inner products of fused rows are weight-averaged cosines; validation of inputs."""

from __future__ import annotations

import numpy as np
import pytest

from fuserank.encoders.base import Embeddings
from fuserank.retrieval.fusion import fuse, fused_modalities

IDS = ("a", "b", "c")


def embeddings(rows: list[list[float]], ids: tuple[str, ...] = IDS) -> Embeddings:
    vectors = np.array(rows, dtype=np.float32)
    return Embeddings(ids, vectors, np.abs(vectors).sum(axis=1) > 0)


# text: a=(1,0) b=(0,1) c=(0.6,0.8) -> cos(a,b)=0, cos(a,c)=0.6, cos(b,c)=0.8
TEXT = embeddings([[1, 0], [0, 1], [0.6, 0.8]])
# behaviour: a=(1,0,0) b=(1,0,0) c=(0,0,1) -> cos(a,b)=1, cos(a,c)=0, cos(b,c)=0
BEHAVIOUR = embeddings([[1, 0, 0], [1, 0, 0], [0, 0, 1]])


def test_inner_product_is_the_weighted_average_of_cosines():
    fused = fuse({"text": TEXT, "behaviour": BEHAVIOUR}, {"text": 1.0, "behaviour": 3.0})
    assert fused.dtype == np.float32 and fused.shape == (3, 5)
    gram = fused @ fused.T
    # (1 * cos_text + 3 * cos_behaviour) / 4
    assert gram[0, 1] == pytest.approx((1 * 0.0 + 3 * 1.0) / 4, abs=1e-6)  # 0.75
    assert gram[0, 2] == pytest.approx((1 * 0.6 + 3 * 0.0) / 4, abs=1e-6)  # 0.15
    assert gram[1, 2] == pytest.approx((1 * 0.8 + 3 * 0.0) / 4, abs=1e-6)  # 0.20
    np.testing.assert_allclose(np.diag(gram), 1.0, rtol=1e-6)


def test_weights_need_not_sum_to_one_and_their_order_does_not_matter():
    one = fuse({"text": TEXT, "behaviour": BEHAVIOUR}, {"text": 0.25, "behaviour": 0.75})
    other = fuse({"behaviour": BEHAVIOUR, "text": TEXT}, {"behaviour": 3.0, "text": 1.0})
    np.testing.assert_allclose(one, other, atol=1e-6)


def test_weight_zero_drops_the_block():
    fused = fuse({"text": TEXT, "behaviour": BEHAVIOUR}, {"text": 2.0, "behaviour": 0.0})
    assert fused.shape == (3, 2)
    np.testing.assert_allclose(fused, TEXT.vectors, atol=1e-7)
    assert fused_modalities({"text": 2.0, "behaviour": 0.0, "image": 0.0}) == ["text"]


def test_zero_weight_may_name_an_absent_modality():
    fused = fuse({"text": TEXT}, {"text": 1.0, "image": 0.0})
    np.testing.assert_allclose(fused, TEXT.vectors, atol=1e-7)


def test_missing_modalities_renormalise_the_row_and_all_missing_stays_zero():
    text = embeddings([[1, 0], [0, 0], [0, 0]])
    behaviour = embeddings([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    fused = fuse({"text": text, "behaviour": behaviour}, {"text": 1.0, "behaviour": 1.0})
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), [1.0, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(fused[1], [0, 1, 0, 0, 0], atol=1e-7)  # behaviour block first, then text


def test_blocks_come_in_sorted_modality_order():
    assert fused_modalities({"text": 1.0, "behaviour": 1.0, "audio": 0.5}) == ["audio", "behaviour", "text"]
    fused = fuse({"text": TEXT, "behaviour": BEHAVIOUR}, {"text": 1.0, "behaviour": 1.0})
    np.testing.assert_allclose(fused[:, :3] * np.sqrt(2), BEHAVIOUR.vectors, atol=1e-6)


def test_mismatched_item_ids_raise_naming_the_modality():
    shuffled = embeddings([[1, 0, 0], [1, 0, 0], [0, 0, 1]], ids=("b", "a", "c"))
    with pytest.raises(ValueError, match="'text'"):
        fuse({"behaviour": BEHAVIOUR, "text": embeddings([[1, 0], [0, 1], [1, 0]], ids=("a", "b", "x"))},
             {"behaviour": 1.0, "text": 1.0})
    with pytest.raises(ValueError, match="'text'"):
        fuse({"behaviour": shuffled, "text": TEXT}, {"behaviour": 1.0, "text": 1.0})


def test_invalid_weights_raise():
    both = {"text": TEXT, "behaviour": BEHAVIOUR}
    with pytest.raises(ValueError, match="image"):
        fuse(both, {"text": 1.0, "image": 0.5})
    with pytest.raises(ValueError, match="behaviour"):
        fuse(both, {"text": 1.0, "behaviour": -0.1})
    with pytest.raises(ValueError, match="positive"):
        fuse(both, {"text": 0.0, "behaviour": 0.0})
    with pytest.raises(ValueError):
        fused_modalities({"text": float("nan")})

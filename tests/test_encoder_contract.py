"""The contract every Encoder implementation passes, and the Embeddings type behind it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.encoders.base import Embeddings, Encoder, l2_normalise
from fuserank.encoders.behaviour import BehaviourEncoder
from fuserank.encoders.text import TextEncoder

from tiny_models import save_tiny_bert

ITEMS = pl.DataFrame(
    {
        schema.ITEM_ID: ["m3", "m1", "m7", "m2", "m9"],
        schema.TEXT: ["a red cat", None, "quarterly tax report", "a picture of a kitten", ""],
    },
    schema={schema.ITEM_ID: pl.String, schema.TEXT: pl.String},
)


def make_text(tmp: Path) -> TextEncoder:
    # no cache, so that "deterministic on repeat" is about the model, not about the cache
    return TextEncoder(save_tiny_bert(tmp / "bert"), batch_size=2, device="cpu")


def make_behaviour(tmp: Path) -> BehaviourEncoder:
    pairs = [("u1", "m3"), ("u1", "m7"), ("u2", "m3"), ("u2", "m2"), ("u3", "m7"), ("u3", "m2"), ("u3", "m3")]
    interactions = pl.DataFrame(
        {schema.USER_ID: [u for u, _ in pairs], schema.ITEM_ID: [i for _, i in pairs],
         schema.TIMESTAMP: list(range(len(pairs))), schema.RATING: [None] * len(pairs)},
        schema=schema.INTERACTIONS,
    )
    # m1 and m9 have no interactions; "extra" is fitted but not asked for
    return BehaviourEncoder.fit(interactions, ["extra", "m2", "m3", "m7", "m1", "m9"], dim=8, seed=0)


FACTORIES: dict[str, Callable[[Path], Encoder]] = {"text": make_text, "behaviour": make_behaviour}


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def encoder(request, tmp_path_factory) -> Encoder:
    return FACTORIES[request.param](tmp_path_factory.mktemp(request.param))


def test_encoder_satisfies_the_protocol(encoder):
    assert isinstance(encoder, Encoder)
    assert isinstance(encoder.name, str) and encoder.name in schema.MODALITIES
    assert isinstance(encoder.dim, int) and encoder.dim > 0


def test_encode_returns_rows_in_input_order_with_the_declared_shape(encoder):
    embeddings = encoder.encode(ITEMS)
    assert isinstance(embeddings, Embeddings)
    assert embeddings.item_ids == tuple(ITEMS[schema.ITEM_ID].to_list())
    assert embeddings.vectors.dtype == np.float32
    assert embeddings.vectors.shape == (ITEMS.height, encoder.dim)
    assert embeddings.mask.dtype == np.bool_ and embeddings.mask.shape == (ITEMS.height,)


def test_rows_are_unit_norm_where_masked_in_and_zero_elsewhere(encoder):
    embeddings = encoder.encode(ITEMS)
    norms = np.linalg.norm(embeddings.vectors, axis=1)
    np.testing.assert_allclose(norms[embeddings.mask], 1.0, rtol=1e-5)
    np.testing.assert_array_equal(norms[~embeddings.mask], 0.0)
    # every implementation here can encode some but not all of these items
    assert 0 < embeddings.mask.sum() < ITEMS.height


def test_encode_is_deterministic_and_row_order_follows_the_input(encoder):
    first = encoder.encode(ITEMS)
    again = encoder.encode(ITEMS)
    np.testing.assert_array_equal(first.vectors, again.vectors)
    np.testing.assert_array_equal(first.mask, again.mask)
    reversed_ = encoder.encode(ITEMS.reverse())
    np.testing.assert_allclose(reversed_.vectors, first.vectors[::-1], atol=2e-5)
    np.testing.assert_array_equal(reversed_.mask, first.mask[::-1])


def test_an_empty_frame_gives_empty_embeddings(encoder):
    embeddings = encoder.encode(ITEMS.head(0))
    assert embeddings.item_ids == ()
    assert embeddings.vectors.shape == (0, encoder.dim)


# The Embeddings type itself.

def test_embeddings_reject_bad_dtype_shape_duplicates_and_masked_out_non_zero_rows():
    ok = np.eye(2, dtype=np.float32)
    mask = np.array([True, True])
    Embeddings(("a", "b"), ok, mask)
    with pytest.raises(ValueError, match="float32"):
        Embeddings(("a", "b"), ok.astype(np.float64), mask)
    with pytest.raises(ValueError, match="shape"):
        Embeddings(("a",), ok, mask)
    with pytest.raises(ValueError, match="bool"):
        Embeddings(("a", "b"), ok, mask.astype(int))
    with pytest.raises(ValueError, match="unique"):
        Embeddings(("a", "a"), ok, mask)
    with pytest.raises(ValueError, match="zero"):
        Embeddings(("a", "b"), ok, np.array([True, False]))


def test_align_reorders_and_fills_unknown_ids_with_zero_rows():
    embeddings = Embeddings(("a", "b", "c"), np.eye(3, dtype=np.float32), np.array([True, True, True]))
    aligned = embeddings.align(["c", "z", "a"])
    assert aligned.item_ids == ("c", "z", "a")
    np.testing.assert_array_equal(aligned.vectors, [[0, 0, 1], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(aligned.mask, [True, False, True])


def test_l2_normalise_scales_rows_and_keeps_zero_rows():
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]], rtol=1e-6)

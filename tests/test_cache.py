"""EmbeddingCache: round trip, persistence, atomic shards, corrupt shards skipped."""

from __future__ import annotations

import logging
import zipfile

import numpy as np
import pytest

from fuserank.encoders.cache import EmbeddingCache, content_key


def test_content_key_is_sha256_hex_and_separates_parts():
    key = content_key("model", "128", "a cat")
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == content_key("model", "128", "a cat")
    assert content_key("ab", "c") != content_key("a", "bc")
    assert content_key("x") == content_key(b"x")
    assert content_key("x") != content_key("x", "")


def test_get_returns_zeros_and_false_for_missing_keys(tmp_path):
    cache = EmbeddingCache(tmp_path, dim=3)
    cache.put(["a", "b"], np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32))
    vectors, found = cache.get(["b", "zzz", "a"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 3)
    np.testing.assert_array_equal(found, [True, False, True])
    np.testing.assert_array_equal(vectors, [[0, 1, 0], [0, 0, 0], [1, 0, 0]])


def test_a_new_instance_reads_every_shard_written_before(tmp_path):
    first = EmbeddingCache(tmp_path / "c", dim=2)
    first.put(["a"], np.array([[1.0, 2.0]]))
    first.put(["b", "c"], np.array([[3.0, 4.0], [5.0, 6.0]]))
    assert len(list((tmp_path / "c").glob("*.npz"))) == 2
    assert not [p for p in (tmp_path / "c").iterdir() if not p.name.endswith(".npz")]  # no temp files left

    second = EmbeddingCache(tmp_path / "c", dim=2)
    vectors, found = second.get(["c", "a", "b"])
    assert found.all()
    np.testing.assert_array_equal(vectors, [[5, 6], [1, 2], [3, 4]])
    assert len(second) == 3 and "b" in second and "d" not in second


def test_shards_are_plain_arrays_without_pickle(tmp_path):
    EmbeddingCache(tmp_path, dim=2).put(["k"], np.ones((1, 2)))
    (shard,) = tmp_path.glob("*.npz")
    with np.load(shard, allow_pickle=False) as data:
        assert data["keys"].dtype.kind == "U"
        assert data["vectors"].dtype == np.float32


def test_put_rejects_a_wrong_shape(tmp_path):
    cache = EmbeddingCache(tmp_path, dim=3)
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        cache.put(["a"], np.zeros((1, 2)))
    with pytest.raises(ValueError):
        cache.put(["a", "b"], np.zeros((1, 3)))


def test_put_with_no_keys_writes_nothing(tmp_path):
    EmbeddingCache(tmp_path, dim=3).put([], np.zeros((0, 3)))
    assert list(tmp_path.iterdir()) == []


def test_corrupt_partial_and_foreign_shards_are_skipped_with_a_warning(tmp_path, caplog):
    good = EmbeddingCache(tmp_path, dim=2)
    good.put(["good"], np.array([[1.0, 0.0]]))
    (tmp_path / "0-truncated.npz").write_bytes((next(tmp_path.glob("*.npz"))).read_bytes()[:40])
    (tmp_path / "1-garbage.npz").write_bytes(b"not a zip at all")
    np.savez(tmp_path / "2-wrong-dim.npz", keys=np.array(["wide"]), vectors=np.ones((1, 5), dtype=np.float32))
    # object arrays need pickle to load; allow_pickle=False must refuse them
    np.savez(tmp_path / "3-pickled.npz", keys=np.array(["p"], dtype=object), vectors=np.ones((1, 2), np.float32))
    with zipfile.ZipFile(tmp_path / "4-no-vectors.npz", "w") as archive:
        archive.writestr("other.npy", b"")

    with caplog.at_level(logging.WARNING, logger="fuserank.encoders.cache"):
        vectors, found = EmbeddingCache(tmp_path, dim=2).get(["good", "wide", "p"])
    np.testing.assert_array_equal(found, [True, False, False])
    np.testing.assert_array_equal(vectors[0], [1.0, 0.0])
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 5
    for name in ("0-truncated", "1-garbage", "2-wrong-dim", "3-pickled", "4-no-vectors"):
        assert any(name in message for message in skipped)


def test_a_later_shard_wins_for_a_repeated_key(tmp_path):
    cache = EmbeddingCache(tmp_path, dim=1)
    cache.put(["k"], np.array([[1.0]]))
    cache.put(["k"], np.array([[2.0]]))
    assert EmbeddingCache(tmp_path, dim=1).get(["k"])[0][0, 0] == 2.0
    assert cache.get(["k"])[0][0, 0] == 2.0

"""validate_items / validate_interactions: casts that lose nothing, errors that say where."""

from __future__ import annotations

import pickle
from datetime import datetime, timezone

import polars as pl
import pytest

from fuserank import schema
from fuserank.data.validate import DataError, validate_interactions, validate_items


def _items(**extra) -> pl.DataFrame:
    return pl.DataFrame({schema.ITEM_ID: ["a", "b", "c"], schema.TEXT: ["x", None, "z"], **extra})


def _interactions(**columns) -> pl.DataFrame:
    base = {
        schema.USER_ID: ["u1", "u1", "u2"],
        schema.ITEM_ID: ["a", "b", "a"],
        schema.TIMESTAMP: [10, 20, 30],
        schema.RATING: [4.0, None, 5.0],
    }
    base.update(columns)
    return pl.DataFrame({k: v for k, v in base.items() if v is not None})


IDS = pl.Series(schema.ITEM_ID, ["a", "b", "c"])


def _raises(fn, row, column, text) -> DataError:
    with pytest.raises(DataError) as info:
        fn()
    err = info.value
    assert (err.row, err.column) == (row, column), str(err)
    assert text in str(err)
    return err


def test_message_names_file_row_and_column():
    err = DataError("interactions.csv", 12, "timestamp", "NaN timestamp")
    assert str(err) == "interactions.csv, row 12, column 'timestamp': NaN timestamp"
    assert str(DataError("items.csv", None, None, "empty table")) == "items.csv: empty table"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.file, copy.row, copy.column, str(copy)) == (err.file, 12, "timestamp", str(err))


def test_valid_items_pass_with_contract_columns_first_and_extras_kept():
    items = pl.DataFrame({"extra": [1, 2], schema.ITEM_ID: [7, 8], schema.IMAGE_PATH: ["p.png", None],
                          schema.TEXT: ["t", None]})
    out = validate_items(items, "items.csv")
    assert out.columns == [schema.ITEM_ID, schema.TEXT, schema.IMAGE_PATH, "extra"]
    assert out.schema[schema.ITEM_ID] == pl.String
    assert out[schema.ITEM_ID].to_list() == ["7", "8"]  # integer ids become text, losslessly
    assert out["extra"].to_list() == [1, 2]
    assert schema.AUDIO_PATH not in out.columns  # absent optional columns stay absent


def test_items_errors():
    _raises(lambda: validate_items(pl.DataFrame({schema.ITEM_ID: ["a"]}), "items.csv"), None, None, "'text'")
    empty = pl.DataFrame(schema={schema.ITEM_ID: pl.String, schema.TEXT: pl.String})
    _raises(lambda: validate_items(empty, "items.csv"), None, None, "empty table")
    dup = pl.DataFrame({schema.ITEM_ID: ["a", "b", "c", "b"], schema.TEXT: ["", "", "", ""]})
    _raises(lambda: validate_items(dup, "items.csv"), 4, schema.ITEM_ID, "duplicate item_id 'b' (first seen in row 2)")
    null_id = pl.DataFrame({schema.ITEM_ID: ["a", None], schema.TEXT: ["", ""]})
    _raises(lambda: validate_items(null_id, "items.csv"), 2, schema.ITEM_ID, "missing value")
    empty_id = pl.DataFrame({schema.ITEM_ID: ["a", ""], schema.TEXT: ["", ""]})
    _raises(lambda: validate_items(empty_id, "items.csv"), 2, schema.ITEM_ID, "empty id")
    float_id = pl.DataFrame({schema.ITEM_ID: [None, 1.5], schema.TEXT: ["", ""]})
    _raises(lambda: validate_items(float_id, "items.csv"), 2, schema.ITEM_ID, "Float64")
    bad_path = _items(**{schema.VIDEO_PATH: [1.0, 2.0, 3.0]})
    _raises(lambda: validate_items(bad_path, "items.csv"), 1, schema.VIDEO_PATH, "expected text")


def test_valid_interactions_are_cast_to_the_schema():
    raw = pl.DataFrame({
        "device": ["m", "d", "m"],
        schema.USER_ID: [1, 1, 2],
        schema.ITEM_ID: ["a", "b", "a"],
        schema.TIMESTAMP: [10.0, 20.0, 30.0],  # integral floats: lossless
        schema.RATING: [4, 3, 5],  # integer ratings: lossless
    })
    out = validate_interactions(raw, IDS, "interactions.csv")
    assert dict(out.schema) == {**schema.INTERACTIONS, "device": pl.String}
    assert out.columns[:4] == list(schema.INTERACTIONS)
    assert out[schema.TIMESTAMP].to_list() == [10, 20, 30]
    assert out[schema.USER_ID].to_list() == ["1", "1", "2"]
    assert out[schema.RATING].to_list() == [4.0, 3.0, 5.0]


def test_rating_is_optional_and_added_as_null_float():
    out = validate_interactions(_interactions(rating=None), IDS, "i.csv")
    assert out.schema[schema.RATING] == pl.Float64
    assert out[schema.RATING].null_count() == 3


def test_datetime_timestamps_become_whole_seconds():
    when = [datetime(2020, 1, 1, tzinfo=timezone.utc), datetime(2020, 1, 2, tzinfo=timezone.utc),
            datetime(1970, 1, 1, 0, 0, 5, tzinfo=timezone.utc)]
    out = validate_interactions(_interactions(timestamp=when), IDS, "i.parquet")
    assert out[schema.TIMESTAMP].to_list() == [1577836800, 1577923200, 5]
    assert out.schema[schema.TIMESTAMP] == pl.Int64
    fractional = [when[0], datetime(2020, 1, 1, 0, 0, 0, 500_000, tzinfo=timezone.utc), when[2]]
    _raises(lambda: validate_interactions(_interactions(timestamp=fractional), IDS, "i.parquet"),
            2, schema.TIMESTAMP, "sub-second")


@pytest.mark.parametrize(
    ("columns", "row", "column", "text"),
    [
        ({schema.TIMESTAMP: [1.0, 2.0, float("nan")]}, 3, schema.TIMESTAMP, "NaN timestamp"),
        ({schema.TIMESTAMP: [1.0, float("inf"), 3.0]}, 2, schema.TIMESTAMP, "infinite timestamp"),
        ({schema.TIMESTAMP: [1.0, 2.5, 3.0]}, 2, schema.TIMESTAMP, "non-integral timestamp 2.5"),
        ({schema.TIMESTAMP: [1, None, 3]}, 2, schema.TIMESTAMP, "missing value"),
        ({schema.TIMESTAMP: ["1", "2", "3"]}, 1, schema.TIMESTAMP, "expected integer seconds"),
        ({schema.RATING: [1.0, float("nan"), 3.0]}, 2, schema.RATING, "NaN rating"),
        ({schema.RATING: [1.0, 2.0, float("-inf")]}, 3, schema.RATING, "infinite rating"),
        ({schema.RATING: ["good", "bad", "ok"]}, 1, schema.RATING, "expected numbers"),
        ({schema.USER_ID: ["u1", None, "u2"]}, 2, schema.USER_ID, "missing value"),
        ({schema.USER_ID: [True, False, True]}, 1, schema.USER_ID, "Boolean"),
        ({schema.ITEM_ID: ["a", "b", "zz"]}, 3, schema.ITEM_ID, "'zz' is not in the items table"),
    ],
)
def test_interaction_errors_name_the_first_offending_row(columns, row, column, text):
    _raises(lambda: validate_interactions(_interactions(**columns), IDS, "interactions.csv"), row, column, text)


def test_duplicate_interaction_is_reported_at_the_repeat():
    raw = pl.DataFrame({
        schema.USER_ID: ["u1", "u2", "u1", "u1"],
        schema.ITEM_ID: ["a", "a", "a", "a"],
        schema.TIMESTAMP: [5, 5, 6, 5],  # row 4 repeats row 1; rows 2 and 3 differ in user / time
    })
    err = _raises(lambda: validate_interactions(raw, IDS, "i.csv"), 4, schema.TIMESTAMP, "first seen in row 1")
    assert "('u1', 'a', 5)" in str(err)


def test_integer_timestamps_beyond_int64_are_rejected():
    big = pl.Series(schema.TIMESTAMP, [1, 2**63, 3], dtype=pl.UInt64)
    _raises(lambda: validate_interactions(_interactions(timestamp=big), IDS, "i.csv"), 2, schema.TIMESTAMP,
            "out of int64 range")
    small = pl.Series(schema.TIMESTAMP, [1, 2, 3], dtype=pl.UInt32)
    assert validate_interactions(_interactions(timestamp=small), IDS, "i.csv").schema[schema.TIMESTAMP] == pl.Int64


def test_missing_columns_and_empty_interactions():
    _raises(lambda: validate_interactions(_interactions().drop(schema.TIMESTAMP), IDS, "i.csv"),
            None, None, "missing required column(s) ['timestamp']")
    _raises(lambda: validate_interactions(_interactions().head(0), IDS, "i.csv"), None, None, "empty table")


def test_integer_catalog_ids_match_text_interaction_ids():
    out = validate_interactions(_interactions(**{schema.ITEM_ID: ["1", "2", "1"]}), pl.Series([1, 2]), "i.csv")
    assert out.height == 3


def test_input_frame_is_not_modified():
    raw = _interactions(timestamp=[1.0, 2.0, 3.0])
    before = raw.clone()
    validate_interactions(raw, IDS, "i.csv")
    assert raw.equals(before)

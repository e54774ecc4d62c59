"""Check items and interactions frames against the contract of schema.py.

Validation casts a column only when the cast loses nothing (integer ids to text, integral float
timestamps to int64 seconds, integer ratings to float); anything else is a `DataError` naming the
file, the first offending data row (1-based, header excluded) and the column. These functions see
frames only, so they can never modify a user's files.
"""

from __future__ import annotations

import time
from typing import NoReturn

import polars as pl

from fuserank import schema

_ID_COLUMNS = (schema.USER_ID, schema.ITEM_ID)
_INT64_MAX = 2**63 - 1
_FUTURE_SLACK = 86_400  # seconds past "now" still accepted (clock skew between systems)


class DataError(ValueError):
    """A data file breaks the contract; says where.

    Attributes:
        file: the file (or frame) name the caller gave.
        row: 1-based data row (header excluded), or None when the problem is the whole file.
        column: the offending column, or None.
        reason: what is wrong, without the location.
    """

    def __init__(self, file: str, row: int | None, column: str | None, reason: str) -> None:
        self.file = file
        self.row = row
        self.column = column
        self.reason = reason
        where = [file]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {reason}")

    def __reduce__(self):  # keeps the four fields through pickling (worker processes)
        return (type(self), (self.file, self.row, self.column, self.reason))


def validate_items(items: pl.DataFrame, file: str) -> pl.DataFrame:
    """Check and conform an items table.

    Args:
        items: one row per item; must hold `item_id` and `text` (nullable), may hold the media
            path columns and any extra columns.
        file: name used in error messages.

    Returns:
        The frame with `item_id`, `text` and the present media path columns cast to String and
        placed first, extra columns after them in their original order. Absent media path columns
        stay absent.

    Raises:
        DataError: empty table, missing column, uncastable type, null item id, empty item id,
            duplicate item id.
    """
    _check_shape(items, schema.ITEMS, file)
    contract = dict(schema.ITEMS)
    contract.update({c: t for c, t in schema.ITEMS_OPTIONAL.items() if c in items.columns})
    out = _conform_columns(items, contract, schema.ITEMS_NULLABLE, file)
    _raise_duplicate(out, (schema.ITEM_ID,), file)
    return out


def validate_interactions(
    interactions: pl.DataFrame, item_ids: pl.Series, file: str, latest: int | None = None
) -> pl.DataFrame:
    """Check and conform an interactions table against the known item ids.

    Args:
        interactions: one row per (user, item, time) event with `user_id`, `item_id`, `timestamp`
            (integer seconds; integral floats and whole-second datetimes are converted) and an
            optional `rating`.
        item_ids: the catalog's item ids (String, or integers that are compared as text).
        file: name used in error messages.
        latest: the latest timestamp accepted (seconds); None: one day after the current time.
            Later timestamps are usually milliseconds or microseconds read as seconds.

    Returns:
        The frame with `user_id`, `item_id` (String), `timestamp` (Int64 seconds since the epoch)
        and `rating` (Float64, all null when absent) first, extra columns after them.

    Raises:
        DataError: empty table, missing column, uncastable type, null or NaN/infinite value,
            negative or future timestamp, duplicate (user_id, item_id, timestamp), item id
            missing from the catalog.
    """
    out = conform_interactions(interactions, file, latest)
    check_duplicate_events(out, file)
    check_known_items(out, item_ids, file)
    return out


def conform_interactions(interactions: pl.DataFrame, file: str, latest: int | None = None) -> pl.DataFrame:
    """`validate_interactions`' checks of each row on its own (shape, types, missing values,
    timestamps), and the conformed frame; rows are numbered from the frame's first."""
    required = {c: t for c, t in schema.INTERACTIONS.items() if c != schema.RATING}
    _check_shape(interactions, required, file)
    if schema.RATING not in interactions.columns:
        interactions = interactions.with_columns(pl.lit(None, dtype=pl.Float64).alias(schema.RATING))
    out = _conform_columns(interactions, schema.INTERACTIONS, schema.INTERACTIONS_NULLABLE, file)
    latest = int(time.time()) + _FUTURE_SLACK if latest is None else latest
    _raise_at(out[schema.TIMESTAMP] < 0, out, file, schema.TIMESTAMP,
              "negative timestamp {value} (expected seconds since 1970-01-01 UTC)")
    _raise_at(out[schema.TIMESTAMP] > latest, out, file, schema.TIMESTAMP,
              f"timestamp {{value}} is in the future (after {latest}); milliseconds instead of seconds?")
    return out


def check_duplicate_events(interactions: pl.DataFrame, file: str, rows: pl.Series | None = None) -> None:
    """Raise a DataError at the first repeated (user_id, item_id, timestamp) of a conformed
    frame; `rows`: each row's 1-based row in `file` (None: its position in the frame)."""
    _raise_duplicate(interactions, (schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP), file, rows)


def check_known_items(interactions: pl.DataFrame, item_ids: pl.Series, file: str) -> None:
    """Raise a DataError at the first row of a conformed frame whose item is not in `item_ids`."""
    known = _known_ids(item_ids, file)
    _raise_at(~interactions[schema.ITEM_ID].is_in(known.implode()), interactions, file, schema.ITEM_ID,
              "item_id {value!r} is not in the items table")


def _check_shape(frame: pl.DataFrame, required: dict[str, pl.DataType], file: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(file, None, None, f"missing required column(s) {missing}; found {frame.columns}")
    if frame.height == 0:
        raise DataError(file, None, None, "empty table (no data rows)")


def _conform_columns(
    frame: pl.DataFrame, contract: dict[str, pl.DataType], nullable: tuple[str, ...], file: str
) -> pl.DataFrame:
    conformed = []
    for name, dtype in contract.items():
        column = _cast(frame[name], dtype, file)
        if name not in nullable:
            _raise_at(column.is_null(), frame, file, name, "missing value")
        if name in _ID_COLUMNS:
            _raise_at(column == "", frame, file, name, "empty id")
        conformed.append(column)
    extras = [frame[c] for c in frame.columns if c not in contract]
    return pl.DataFrame(conformed + extras)


def _cast(column: pl.Series, dtype: pl.DataType, file: str) -> pl.Series:
    if dtype == pl.String:
        return _to_string(column, file)
    if dtype == pl.Int64:
        return _to_seconds(column, file)
    if dtype == pl.Float64:
        return _to_float(column, file)
    raise AssertionError(f"no cast rule for {dtype}")  # schema.py gained a dtype this module lacks


def _to_string(column: pl.Series, file: str) -> pl.Series:
    dt = column.dtype
    if dt == pl.String:
        return column
    if dt.is_integer() or dt in (pl.Null, pl.Categorical) or isinstance(dt, pl.Enum):
        return column.cast(pl.String)
    _wrong_type(column, file, "text or integers")


def _to_seconds(column: pl.Series, file: str) -> pl.Series:
    dt = column.dtype
    name = column.name
    if dt == pl.Null:
        return column.cast(pl.Int64)
    if dt.is_integer():
        if dt == pl.UInt64:
            _raise_at(column > _INT64_MAX, column, file, name, "timestamp {value} out of int64 range")
        return column.cast(pl.Int64)
    if dt.is_float():
        _raise_at(column.is_nan(), column, file, name, "NaN timestamp")
        _raise_at(column.is_infinite(), column, file, name, "infinite timestamp")
        _raise_at(column != column.floor(), column, file, name, "non-integral timestamp {value}")
        _raise_at(column.abs() >= 2.0**63, column, file, name, "timestamp {value} out of int64 range")
        return column.cast(pl.Int64)
    if dt == pl.Date:
        return column.dt.epoch("s").cast(pl.Int64)
    if isinstance(dt, pl.Datetime):
        per_second = {"ns": 1_000_000_000, "us": 1_000_000, "ms": 1_000}[dt.time_unit]
        fraction = column.dt.timestamp(dt.time_unit) % per_second
        _raise_at(fraction != 0, column, file, name, "sub-second timestamp {value}")
        return column.dt.epoch("s").cast(pl.Int64)
    _wrong_type(column, file, "integer seconds since the epoch")


def _to_float(column: pl.Series, file: str) -> pl.Series:
    dt = column.dtype
    name = column.name
    if dt == pl.Null or dt.is_integer():
        return column.cast(pl.Float64)
    if dt.is_float():
        _raise_at(column.is_nan(), column, file, name, "NaN rating")
        _raise_at(column.is_infinite(), column, file, name, "infinite rating")
        return column.cast(pl.Float64)
    _wrong_type(column, file, "numbers")


def _wrong_type(column: pl.Series, file: str, expected: str) -> NoReturn:
    non_null = column.is_not_null().arg_true()
    if column.dtype == pl.String:
        # A CSV reader falls back to text for the whole column because of one cell ("nan",
        # "n/a", "inf"): point at that cell, not at the first row.
        parsed = column.str.strip_chars().cast(pl.Float64, strict=False)
        odd = (column.is_not_null() & (parsed.is_null() | ~parsed.is_finite().fill_null(False))).arg_true()
        non_null = odd if len(odd) else non_null
    row = int(non_null[0]) + 1 if len(non_null) else 1
    value = column[row - 1]
    raise DataError(file, row, column.name, f"expected {expected}, got {column.dtype} value {value!r}")


def _known_ids(item_ids: pl.Series, file: str) -> pl.Series:
    try:
        return _to_string(item_ids, file)
    except DataError as err:
        raise DataError(file, None, schema.ITEM_ID, f"catalog item ids are not text: {err.reason}") from None


def _raise_at(mask: pl.Series, frame: pl.DataFrame | pl.Series, file: str, column: str, reason: str) -> None:
    """Raise a DataError at the first row where `mask` is true (nulls in `mask` count as false).

    `reason` may use {value}, the offending cell of `column`.
    """
    hits = mask.fill_null(False).arg_true()
    if len(hits) == 0:
        return
    index = int(hits[0])
    series = frame if isinstance(frame, pl.Series) else frame[column]
    raise DataError(file, index + 1, column, reason.format(value=series[index]))


def _raise_duplicate(frame: pl.DataFrame, keys: tuple[str, ...], file: str, rows: pl.Series | None = None) -> None:
    """Raise a DataError at the first row whose `keys` repeat an earlier row (`rows`: each
    row's 1-based row in `file`; None: its position in the frame)."""
    repeated = frame.select(~pl.struct(*keys).is_first_distinct()).to_series().arg_true()
    if len(repeated) == 0:
        return
    index = int(repeated[0])
    row = frame.row(index, named=True)
    same = frame.select(pl.all_horizontal([pl.col(k) == row[k] for k in keys])).to_series()
    first = int(same.arg_true()[0])
    at, first_at = (index + 1, first + 1) if rows is None else (int(rows[index]), int(rows[first]))
    values = tuple(row[k] for k in keys)
    label = keys[0] if len(keys) == 1 else f"({', '.join(keys)})"
    shown = repr(values[0]) if len(keys) == 1 else repr(values)
    raise DataError(file, at, keys[-1], f"duplicate {label} {shown} (first seen in row {first_at})")

"""Read a user's own catalog: an items table and an interactions table (Parquet or CSV).

Ids and text/path columns are read as text so that ids such as "007" keep their leading zeros;
every other column is left to the reader's inference and then checked by `validate`.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import polars as pl

from fuserank import schema
from fuserank.data.validate import DataError, validate_interactions, validate_items

TEXT_COLUMNS = (schema.USER_ID, schema.ITEM_ID, schema.TEXT, *schema.MEDIA_PATH_COLUMNS)
_PARQUET_SUFFIXES = (".parquet", ".pq")
_SEPARATORS = {".csv": ",", ".tsv": "\t"}


def read_table(path: Path) -> pl.DataFrame:
    """Read a Parquet (.parquet, .pq) or delimited (.csv, .tsv) table.

    Args:
        path: the file; the suffix decides the format.

    Returns:
        The table as read; in CSV/TSV files the id, text and media path columns are String.

    Raises:
        DataError: missing, unreadable or malformed file, or an unknown suffix. For a malformed
            CSV/TSV the error names the first bad row (and column) when it can be found.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(str(path), None, None, "no such file")
    if suffix in _PARQUET_SUFFIXES:
        try:
            return pl.read_parquet(path)
        except Exception as err:  # polars and pyarrow raise many types for a corrupt file
            raise DataError(str(path), None, None, f"unreadable Parquet file: {_first_line(err)}") from err
    if suffix in _SEPARATORS:
        return read_delimited(path, separator=_SEPARATORS[suffix], text_columns=TEXT_COLUMNS)
    known = sorted([*_PARQUET_SUFFIXES, *_SEPARATORS])
    raise DataError(str(path), None, None, f"unknown table format {suffix!r}; expected one of {known}")


def read_delimited(
    path: Path,
    separator: str,
    text_columns: tuple[str, ...] = (),
    schema_overrides: dict[str, pl.DataType] | None = None,
    quote_char: str | None = '"',
) -> pl.DataFrame:
    """Read a delimited text file with a header row, turning parse failures into DataError.

    Args:
        path: the file (UTF-8, with or without a byte-order mark; CRLF line ends are fine).
        separator: one character, e.g. "," or "\\t".
        text_columns: columns read as String when present.
        schema_overrides: further column -> dtype pairs (these must be present).
        quote_char: None when fields are never quoted (a stray quote is then just a character).

    Returns:
        The table; column types are inferred from the whole file except the overridden ones.

    Raises:
        DataError: unreadable or malformed file; names the first bad row and column when found.
            A file that is not UTF-8 (e.g. Latin-1) names the row and column of its first
            non-UTF-8 byte.
    """
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            header = next(_csv_reader(handle, separator, quote_char), [])
    except UnicodeDecodeError as err:
        raise (_locate_bad_encoding(path, separator, quote_char) or
               DataError(str(path), None, None, f"unreadable file: {err}")) from err
    except OSError as err:
        raise DataError(str(path), None, None, f"unreadable file: {err}") from err
    overrides = {c: pl.String for c in text_columns if c in header}
    overrides.update(schema_overrides or {})
    try:
        return pl.read_csv(
            path,
            separator=separator,
            quote_char=quote_char,
            schema_overrides=overrides,
            infer_schema_length=None,  # a float in row 10,000 must not break an int column
        )
    except pl.exceptions.NoDataError:
        raise DataError(str(path), None, None, "empty file") from None
    except Exception as err:
        not_utf8 = _locate_bad_encoding(path, separator, quote_char)
        if not_utf8 is not None:
            raise not_utf8 from err
        row, column = _locate_parse_error(path, separator, quote_char, str(err))
        raise DataError(str(path), row, column, f"malformed file: {_first_line(err)}") from err


def load_items(items_path: Path) -> pl.DataFrame:
    """Read and validate a catalog's items table (see schema.ITEMS); DataError names the problem."""
    return validate_items(read_table(items_path), str(items_path))


def load_catalog(items_path: Path, interactions_path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read and validate a catalog.

    Args:
        items_path: items table (see schema.ITEMS); media paths are relative to the catalog root.
        interactions_path: interactions table (see schema.INTERACTIONS).

    Returns:
        (items, interactions) conformed by `validate_items` / `validate_interactions`; every
        interaction's item id is in the items table.

    Raises:
        DataError: naming the file, row and column of the first problem.
    """
    items = load_items(items_path)
    raw = read_table(interactions_path)
    interactions = validate_interactions(raw, items[schema.ITEM_ID], str(interactions_path))
    return items, interactions


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _csv_reader(handle, separator: str, quote_char: str | None):
    if quote_char is None:
        return csv.reader(handle, delimiter=separator, quoting=csv.QUOTE_NONE)
    return csv.reader(handle, delimiter=separator, quotechar=quote_char)


_UNPARSABLE = re.compile(r"could not parse `(?P<value>.*?)` as dtype .*? at column '(?P<column>[^']*)'")


def _locate_parse_error(
    path: Path, separator: str, quote_char: str | None, message: str
) -> tuple[int | None, str | None]:
    """Find the first row polars choked on: a ragged row, or the cell it could not parse.

    Polars reports a byte offset of the chunk, not the row, so the file is scanned again here
    (only on this error path).
    """
    wanted = _UNPARSABLE.search(message)
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            reader = _csv_reader(handle, separator, quote_char)
            header = next(reader, [])
            col = header.index(wanted["column"]) if wanted and wanted["column"] in header else None
            for row, fields in enumerate(reader, start=1):
                if len(fields) != len(header) and fields:
                    return row, None
                if col is not None and fields[col] == wanted["value"]:
                    return row, header[col]
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return None, wanted["column"] if wanted else None


_SURROGATE = re.compile("[\udc80-\udcff]")


def _locate_bad_encoding(path: Path, separator: str, quote_char: str | None) -> DataError | None:
    """The error naming the row and column of the first byte that is not UTF-8, or None when
    the file is valid UTF-8 (or cannot be read again).

    The file is parsed once more with each undecodable byte kept as a lone surrogate
    (errors="surrogateescape"), so quoting and multi-line fields count rows as the reader does.
    Only called on the error path.
    """
    try:
        with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            reader = _csv_reader(handle, separator, quote_char)
            header = next(reader, [])
            for name in header:
                if _SURROGATE.search(name):
                    return DataError(str(path), None, None, f"header: {_not_utf8(name)}")
            for row, fields in enumerate(reader, start=1):
                for index, value in enumerate(fields):
                    if _SURROGATE.search(value):
                        column = header[index] if index < len(header) else f"#{index + 1}"
                        return DataError(str(path), row, column, _not_utf8(value))
    except (OSError, csv.Error):
        return None
    return None


def _not_utf8(value: str) -> str:
    """What is wrong with a cell whose undecodable bytes are lone surrogates, and how to fix it."""
    byte = ord(_SURROGATE.search(value).group()) - 0xDC00  # surrogateescape maps byte b to U+DC00 + b
    shown = value.encode("utf-8", errors="surrogateescape").decode("latin-1")
    return (f"the file is not UTF-8 text: byte 0x{byte:02x} in {shown!r} (shown as Latin-1); "
            "save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 FILE > NEW_FILE`")

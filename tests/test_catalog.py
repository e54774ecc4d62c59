"""read_table / load_catalog on tiny files written in tmp."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from fuserank import schema
from fuserank.data.catalog import load_catalog, read_table
from fuserank.data.validate import DataError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_keeps_leading_zeros_in_ids_and_text_columns(tmp_path):
    path = _write(tmp_path / "items.csv", "item_id,text,image_path,price\n007,12,img/1.png,3\n010,,,4\n")
    table = read_table(path)
    assert table[schema.ITEM_ID].to_list() == ["007", "010"]
    assert table[schema.TEXT].to_list() == ["12", None]
    assert table.schema["price"] == pl.Int64  # other columns keep the reader's inference


def test_tsv_and_parquet_read_the_same_table(tmp_path):
    frame = pl.DataFrame({schema.USER_ID: ["u1", "u2"], schema.ITEM_ID: ["a", "b"], schema.TIMESTAMP: [1, 2]})
    frame.write_parquet(tmp_path / "i.parquet")
    _write(tmp_path / "i.tsv", "user_id\titem_id\ttimestamp\nu1\ta\t1\nu2\tb\t2\n")
    assert read_table(tmp_path / "i.parquet").equals(frame)
    assert read_table(tmp_path / "i.tsv").equals(frame)


def test_late_float_does_not_break_type_inference(tmp_path):
    rows = "".join(f"u,{i},{i}\n" for i in range(200)) + "u,200,200.5\n"
    table = read_table(_write(tmp_path / "i.csv", "user_id,item_id,rating\n" + rows))
    assert table.schema["rating"] == pl.Float64


def test_ragged_row_is_located(tmp_path):
    path = _write(tmp_path / "i.csv", "user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,c,3,extra\n")
    with pytest.raises(DataError) as info:
        read_table(path)
    assert info.value.file == str(path)
    assert info.value.row == 3


def test_file_level_errors(tmp_path):
    for path, text in [
        (tmp_path / "missing.csv", "no such file"),
        (_write(tmp_path / "empty.csv", ""), "empty file"),
        (_write(tmp_path / "table.json", "{}"), "unknown table format"),
        (_write(tmp_path / "broken.parquet", "not parquet"), "unreadable Parquet"),
    ]:
        with pytest.raises(DataError) as info:
            read_table(path)
        assert text in str(info.value) and str(path) in str(info.value)
        assert info.value.row is None


def test_load_catalog_validates_both_tables(tmp_path):
    items = _write(tmp_path / "items.csv", "item_id,text\n1,one\n2,two\n")
    good = _write(tmp_path / "good.csv", "user_id,item_id,timestamp\nu,1,10\nu,2,20.0\n")
    items_out, inter_out = load_catalog(items, good)
    assert items_out[schema.ITEM_ID].to_list() == ["1", "2"]
    assert dict(inter_out.schema) == schema.INTERACTIONS
    assert inter_out[schema.TIMESTAMP].to_list() == [10, 20]

    unknown = _write(tmp_path / "bad.csv", "user_id,item_id,timestamp\nu,1,10\nu,3,20\n")
    with pytest.raises(DataError) as info:
        load_catalog(items, unknown)
    assert (info.value.file, info.value.row, info.value.column) == (str(unknown), 2, schema.ITEM_ID)
    assert unknown.read_text(encoding="utf-8") == "user_id,item_id,timestamp\nu,1,10\nu,3,20\n"

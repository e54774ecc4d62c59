"""Bad input end to end through the readers (load_catalog, safe_media_path, the text encoder):
each case stops with a DataError naming file, row and column, or degrades as documented.

Cases already covered elsewhere (and not repeated): NaN/infinite/missing values and wrong types
in frames (test_validate.py), ragged CSV rows and unreadable files (test_catalog.py), escaping,
absolute and symlinked media paths (test_media.py), corrupt images, sounds and videos (the
encoder tests), corrupt cache shards (test_cache.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.data.catalog import load_catalog
from fuserank.data.split import leave_last_out
from fuserank.data.validate import DataError, validate_interactions
from fuserank.data.media import MediaError, group_media_files, safe_media_path

ITEMS_CSV = "item_id,text\n1,one\n2,two\n3,three\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, interactions: str | pl.DataFrame, items: str = ITEMS_CSV) -> DataError:
    items_path = write(tmp_path / "items.csv", items)
    if isinstance(interactions, str):
        path = write(tmp_path / "interactions.csv", interactions)
    else:
        path = tmp_path / "interactions.parquet"
        interactions.write_parquet(path)
    with pytest.raises(DataError) as info:
        load_catalog(items_path, path)
    return info.value


def where(err: DataError) -> tuple[str, int | None, str | None]:
    return Path(err.file).name, err.row, err.column


@pytest.mark.parametrize(
    ("body", "row", "reason"),
    [
        ("u,1,10\nu,2,-5\n", 2, "negative timestamp -5"),
        ("u,1,10\nu,2,1700000000000\n", 2, "in the future"),  # milliseconds read as seconds
        ("u,1,10\nu,2,20\nu,1,10\n", 3, "duplicate (user_id, item_id, timestamp) ('u', '1', 10) (first seen in row 1)"),
        ("u,1,10\nu,9,20\n", 2, "item_id '9' is not in the items table"),
    ],
)
def test_bad_interaction_rows_in_a_csv_name_the_row(tmp_path, body, row, reason):
    err = load_error(tmp_path, "user_id,item_id,timestamp\n" + body)
    column = schema.ITEM_ID if "not in the items" in reason else schema.TIMESTAMP
    assert where(err) == ("interactions.csv", row, column)
    assert reason in err.reason


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "n/a"])
@pytest.mark.parametrize("column", [schema.RATING, schema.TIMESTAMP])
def test_nan_infinite_and_text_cells_in_a_numeric_csv_column_are_located(tmp_path, value, column):
    # One such cell makes the CSV reader read the whole column as text; the error points at it.
    cells = {schema.TIMESTAMP: ["10", "20", "30"], schema.RATING: ["4", "5", "3"]}
    cells[column][1] = value
    rows = "".join(f"u,{i + 1},{cells[schema.TIMESTAMP][i]},{cells[schema.RATING][i]}\n" for i in range(3))
    err = load_error(tmp_path, "user_id,item_id,timestamp,rating\n" + rows)
    assert where(err) == ("interactions.csv", 2, column)
    assert repr(value) in err.reason or "infinite" in err.reason  # polars itself parses "inf" as a float


def test_future_timestamps_are_judged_against_the_given_latest_time():
    frame = pl.DataFrame({schema.USER_ID: ["u", "u"], schema.ITEM_ID: ["1", "2"], schema.TIMESTAMP: [10, 1_000]})
    ids = pl.Series(["1", "2"])
    assert validate_interactions(frame, ids, "f", latest=1_000).height == 2
    with pytest.raises(DataError, match=r"f, row 2, column 'timestamp': timestamp 1000 is in the future \(after 999\)"):
        validate_interactions(frame, ids, "f", latest=999)
    # The default is "now" plus a day of clock skew: a timestamp from an hour ago passes.
    recent = frame.with_columns(pl.Series(schema.TIMESTAMP, [10, int(time.time()) - 3600]))
    assert validate_interactions(recent, ids, "f").height == 2


@pytest.mark.parametrize(
    ("column", "values", "row", "expected"),
    [
        (schema.TIMESTAMP, ["10", "20"], 1, "expected integer seconds"),
        (schema.TIMESTAMP, [10.0, 20.5], 2, "non-integral timestamp 20.5"),
        (schema.RATING, ["4", "5"], 1, "expected numbers"),
        (schema.ITEM_ID, [1.0, 2.0], 1, "expected text or integers"),
        (schema.USER_ID, [[1], [2]], 1, "expected text or integers"),
    ],
)
def test_wrong_dtypes_in_a_parquet_file_name_the_column(tmp_path, column, values, row, expected):
    frame = {schema.USER_ID: ["u", "u"], schema.ITEM_ID: ["1", "2"], schema.TIMESTAMP: [10, 20], schema.RATING: [4.0, 5.0]}
    frame[column] = values
    err = load_error(tmp_path, pl.DataFrame(frame))
    assert where(err) == ("interactions.parquet", row, column)
    assert expected in err.reason


def test_truncated_parquet_and_garbage_bytes_are_file_level_errors(tmp_path):
    items_path = write(tmp_path / "items.csv", ITEMS_CSV)
    whole = tmp_path / "whole.parquet"
    pl.DataFrame({schema.USER_ID: ["u"] * 50, schema.ITEM_ID: ["1"] * 50, schema.TIMESTAMP: list(range(50))}).write_parquet(whole)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(DataError, match="unreadable Parquet") as info:
        load_catalog(items_path, cut)
    assert info.value.file == str(cut) and info.value.row is None


def test_malformed_csv_quoting_and_bad_encoding_are_located(tmp_path):
    err = load_error(tmp_path, 'user_id,item_id,timestamp\nu,1,10\nu,"2,20\nu,3,30\n')
    assert Path(err.file).name == "interactions.csv"
    assert "malformed" in err.reason or err.row is not None
    items_path = write(tmp_path / "items.csv", ITEMS_CSV)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("user_id,item_id,timestamp\nu,1,10\nJos\xe9,2,20\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        load_catalog(items_path, latin)
    assert info.value.file == str(latin) and ("utf-8" in str(info.value).lower() or "unreadable" in str(info.value))


def test_an_empty_catalog_is_an_error_naming_the_items_file(tmp_path):
    err = load_error(tmp_path, "user_id,item_id,timestamp\nu,1,10\n", items="item_id,text\n")
    assert where(err) == ("items.csv", None, None) and "empty" in err.reason
    err = load_error(tmp_path, "user_id,item_id,timestamp\n")
    assert where(err)[0] == "interactions.csv" and "empty" in err.reason


def test_users_with_a_single_interaction_are_kept_as_history_and_never_evaluated(tmp_path):
    items_path = write(tmp_path / "items.csv", ITEMS_CSV)
    path = write(tmp_path / "i.csv", "user_id,item_id,timestamp\nsolo,1,5\nu,1,10\nu,2,20\nu,3,30\n")
    _, interactions = load_catalog(items_path, path)
    split = leave_last_out(interactions, min_interactions=3)
    assert split.train.filter(pl.col(schema.USER_ID) == "solo").height == 1
    for part in (split.valid, split.test):
        assert "solo" not in part[schema.USER_ID].to_list()
    assert split.test[schema.ITEM_ID].to_list() == ["3"] and split.valid[schema.ITEM_ID].to_list() == ["2"]


UNICODE = [
    "Amélie — ein Märchen 🎬🍿",
    "東京物語 (Tokyo Story)",
    "שלום עולם مرحبا بالعالم",  # right-to-left scripts
    "e\u0301 combining accent, zero\u200bwidth space",
    'a "quoted", multi-line\ndescription',
]


def test_unicode_and_very_long_text_survive_csv_and_parquet_byte_for_byte(tmp_path):
    long_text = "lorem ipsum " * 20_000  # 240,000 characters
    texts = [*UNICODE, long_text]
    items = pl.DataFrame({schema.ITEM_ID: ["ü1", "東2", "3", "4", "5", "6"], schema.TEXT: texts})
    interactions = pl.DataFrame({schema.USER_ID: ["ユーザー"] * 6, schema.ITEM_ID: items[schema.ITEM_ID],
                                 schema.TIMESTAMP: list(range(1, 7))})
    items.write_csv(tmp_path / "items.csv")
    interactions.write_parquet(tmp_path / "interactions.parquet")
    got_items, got_interactions = load_catalog(tmp_path / "items.csv", tmp_path / "interactions.parquet")
    assert got_items[schema.TEXT].to_list() == texts
    assert got_items[schema.ITEM_ID].to_list() == items[schema.ITEM_ID].to_list()
    assert got_interactions[schema.USER_ID].unique().to_list() == ["ユーザー"]


def test_the_text_encoder_truncates_long_and_unicode_text_to_unit_vectors(tmp_path):
    from fuserank.encoders.text import TextEncoder
    from tiny_models import save_tiny_bert

    encoder = TextEncoder(save_tiny_bert(tmp_path / "bert"), max_length=16)
    texts = [*UNICODE, "lorem ipsum " * 20_000, "\x00\x01 control characters"]
    items = pl.DataFrame({schema.ITEM_ID: [f"i{i}" for i in range(len(texts))], schema.TEXT: texts})
    emb = encoder.encode(items)
    assert emb.vectors.shape[0] == len(texts) and emb.mask.all()
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "path",
    ["with\x00nul.png", "x" * 5_000 + ".png", "a/" * 3_000 + "b.png", "../../etc/passwd", "sub/../../outside.png"],
)
def test_unusable_media_paths_are_media_errors_not_crashes(tmp_path, path):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(MediaError):
        safe_media_path(root, path)


def test_a_symlinked_folder_out_of_the_root_and_a_symlink_loop_are_rejected(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"\x89PNG")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "loop.png").symlink_to(root / "loop.png")
    (root / "ok.png").write_bytes(b"\x89PNG ok")
    with pytest.raises(MediaError, match="outside the catalog root"):
        safe_media_path(root, "linked/secret.png")
    with pytest.raises(MediaError):
        safe_media_path(root, "loop.png")
    # The encoders' shared entry point degrades each bad path to a failure and keeps the good one.
    ids = ["ok", "linked", "loop", "nul", "none"]
    paths = ["ok.png", "linked/secret.png", "loop.png", "a\x00.png", None]
    rows, files, failures = group_media_files(ids, paths, root, ("test",))
    assert list(files.values()) == [(root / "ok.png").resolve()]
    assert sorted(failures) == ["linked", "loop", "nul"]


# --- No unsafe loading: nothing a user receives from someone else is unpickled -------------------

import ast  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src" / "fuserank"
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
UNSAFE_CALLS = {"read_pickle", "unsafe_load", "full_load", "Unpickler"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unsafe_loads(source: str, filename: str = "<src>") -> list[str]:
    """Every import of a pickling module and every call that can unpickle or run code."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{filename}:{node.lineno} import {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        last = name.rsplit(".", 1)[-1]
        bad = (
            last in UNSAFE_CALLS
            or name in {"eval", "exec", "builtins.eval", "builtins.exec"}  # not torch's module.eval()
            or (name.split(".")[0] in UNSAFE_MODULES and last in {"load", "loads", "open"})
            or (name.endswith("torch.load") and not _keyword_is(node, "weights_only", True))
            or (last == "load" and name.split(".")[0] in {"np", "numpy"} and _keyword_is(node, "allow_pickle", True))
            or (name in {"yaml.load"} and not any(k.arg == "Loader" and "Safe" in _dotted(k.value) for k in node.keywords))
            or (name.startswith("mlflow.") and last == "load_model")
            or (last == "from_pretrained" and _keyword_is(node, "use_safetensors", False))
            or (last in {"create_model", "create_model_and_transforms", "load_checkpoint"}
                and _keyword_is(node, "weights_only", False))
        )
        if bad:
            found.append(f"{filename}:{node.lineno} {name}(...)")
    return found


def test_the_scanner_catches_planted_unsafe_loads():
    planted = """
import pickle
from joblib import load
import numpy as np, torch, yaml
np.load(p, allow_pickle=True)
torch.load(p)
torch.load(p, weights_only=False)
yaml.load(text)
mlflow.lightgbm.load_model(uri)
pd.read_pickle(p)
eval(text)
np.load(p)
torch.load(p, weights_only=True)
yaml.load(text, Loader=yaml.SafeLoader)
yaml.safe_load(text)
"""
    found = unsafe_loads(planted)
    assert len(found) == 9, found
    assert not any(f":{n} " in " ".join(found) for n in (12, 13, 14, 15))


def test_no_source_file_unpickles_or_loads_unsafely():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30
    found = [hit for f in files for hit in unsafe_loads(f.read_text(encoding="utf-8"), str(f.relative_to(SRC)))]
    assert found == []


def test_embedding_cache_and_ranker_are_read_without_pickle():
    # The formats that cross machines: npz shards read with allow_pickle=False, the booster as text.
    cache = (SRC / "encoders" / "cache.py").read_text(encoding="utf-8")
    assert "allow_pickle=False" in cache
    ranking = (SRC / "ranking" / "ranker.py").read_text(encoding="utf-8")
    assert "model_file" in ranking or "model_str" in ranking


@pytest.mark.parametrize("rows_before", [1, 2_000], ids=["in-the-first-block", "past-the-first-block"])
def test_a_latin1_csv_names_the_row_and_column_and_says_it_is_not_utf8(tmp_path, rows_before):
    # Latin-1 "é" is the single byte 0xe9, never valid UTF-8 on its own. Past the reader's first
    # block the failure comes from polars instead of Python's decoder; both are located.
    body = "".join(f"{i},plain item {i}\n" for i in range(1, rows_before + 1))
    items = tmp_path / "items.csv"
    items.write_bytes(("item_id,text\n" + body).encode("utf-8") + "x,\"café, crème\"\n".encode("latin-1"))
    interactions = write(tmp_path / "interactions.csv", "user_id,item_id,timestamp\nu,1,10\n")
    with pytest.raises(DataError) as info:
        load_catalog(items, interactions)
    assert where(info.value) == ("items.csv", rows_before + 1, schema.TEXT)
    assert "not UTF-8" in info.value.reason and "0xe9" in info.value.reason
    assert "'café, crème'" in info.value.reason  # the cell, shown as Latin-1, so it can be found


def test_a_latin1_byte_in_the_header_or_an_id_column_is_named_too(tmp_path):
    items = write(tmp_path / "items.csv", ITEMS_CSV)
    interactions = tmp_path / "interactions.csv"
    interactions.write_bytes("user_id,item_id,timestamp\nu,1,10\nJosé,2,20\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        load_catalog(items, interactions)
    assert where(info.value) == ("interactions.csv", 2, schema.USER_ID) and "0xe9" in info.value.reason
    interactions.write_bytes("user_id,item_id,timestamp,note\xe9\nu,1,10,x\n".encode("latin-1"))
    with pytest.raises(DataError, match="header: the file is not UTF-8") as info:
        load_catalog(items, interactions)
    assert info.value.row is None

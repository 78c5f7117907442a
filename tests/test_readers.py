"""Readers on the real shared data (row counts, click rates, vocabularies) and on small broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ihas_lightning.data.readers import FORMATS, read_data, read_table
from ihas_lightning.data.readers_formats import (
    AVAZU_SCHEMA,
    CRITEO_SCHEMA,
    read_avazu,
    read_criteo,
    read_criteo_1tb,
    read_libfm,
)
from _reader_helpers import assert_bad, distinct
from ihas_lightning.data.readers_movielens import MOVIELENS_100K_SCHEMA, read_movielens_100k
from ihas_lightning.data.schema import DataFormatError, MultiValuedField, RawColumns, Schema

FIXTURES = Path(__file__).parent / "fixtures"


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def criteo_10k(data_dir: Path) -> RawColumns:
    return read_criteo(data_dir / "criteo" / "train-10k.txt")


@pytest.fixture(scope="module")
def movielens(data_dir: Path) -> RawColumns:
    return read_movielens_100k(data_dir / "movielens" / "ml-100k")


def test_criteo_kaggle_tsv(criteo_10k: RawColumns) -> None:
    raw = criteo_10k
    assert len(raw) == 10_000 and raw.schema == CRITEO_SCHEMA
    assert raw.labels.dtype == np.float32 and int(raw.labels.sum()) == 2182      # 21.8% clicks
    assert raw.schema.log_dense == tuple(f"I{i}" for i in range(1, 14))
    assert (distinct(raw.sparse["C1"]), distinct(raw.sparse["C6"]), distinct(raw.sparse["C9"])) == (175, 7, 3)
    # Missing values: empty strings for categories, NaN for counts.
    assert int((raw.sparse["C22"] == "").sum()) == 8182
    assert int(np.isnan(raw.dense["I1"]).sum()) == 4481 and np.nansum(raw.dense["I1"]) == 18652.0
    # First row: label 0, I1 = 1, I12 empty, C1 = 68fd1e64, C22 empty.
    assert raw.labels[0] == 0 and raw.dense["I1"][0] == 1.0 and np.isnan(raw.dense["I12"][0])
    assert raw.sparse["C1"][0] == "68fd1e64" and raw.sparse["C22"][0] == ""
    assert all(isinstance(v, str) for v in raw.sparse["C3"][:100])


def test_criteo_csv_with_header(data_dir: Path) -> None:
    path = data_dir / "criteo" / "criteo_sample_header.csv"
    raw = read_criteo(path)                      # header sniffed
    assert len(raw) == 200 and int(raw.labels.sum()) == 49
    assert raw.dense["I3"][0] == 260.0 and raw.dense["I5"][0] == 17668.0   # written as 260.0
    assert int(np.isnan(raw.dense["I1"]).sum()) == 90 and distinct(raw.sparse["C1"]) == 27
    assert raw.sparse["C1"][0] == "05db9164" and raw.sparse["C26"][0] == ""
    same = read_criteo(path, header=True)
    assert np.array_equal(same.labels, raw.labels)
    # Forcing "no header" makes line 1 a data row whose label is the word 'label'.
    assert_bad(lambda: read_criteo(path, header=False), path, 1, "label", "got 'label'")


def test_criteo_1tb(data_dir: Path) -> None:
    raw = read_criteo_1tb(data_dir / "criteo-1tb" / "sample-1k.txt")
    assert len(raw) == 1000 and int(raw.labels.sum()) == 21                 # 2.1% clicks
    assert raw.schema == CRITEO_SCHEMA
    assert raw.dense["I1"][:2].tolist() == [5.0, 32.0] and np.isnan(raw.dense["I1"][2])
    assert raw.sparse["C1"][0] == "62770d79" and distinct(raw.sparse["C1"]) == 306
    assert int((raw.sparse["C14"] == "").sum()) == 461
    # Different hashing from Kaggle: no shared C1 vocabulary.
    kaggle = read_criteo(Path(raw.source).parents[1] / "criteo" / "train-10k.txt")
    assert not set(raw.sparse["C1"]) - {""} & set(kaggle.sparse["C1"])


def test_avazu_with_header(data_dir: Path) -> None:
    raw = read_avazu(data_dir / "avazu" / "train-9k.csv")
    assert len(raw) == 8999 and int(raw.labels.sum()) == 1563 and raw.schema == AVAZU_SCHEMA
    assert "id" not in raw.sparse and "hour" not in raw.sparse and "click" not in raw.sparse
    # Every row is from 14102100: hour 0 of 2014-10-21, a Tuesday.
    assert set(raw.sparse["hour_of_day"]) == {"0"} and set(raw.sparse["weekday"]) == {"Tue"}
    assert (distinct(raw.sparse["site_id"]), distinct(raw.sparse["app_id"]), distinct(raw.sparse["C14"])) == (
        361, 303, 259)
    assert raw.sparse["device_ip"][0] == "ddd2926e" and raw.sparse["C20"][0] == "-1"


def test_avazu_without_header(data_dir: Path) -> None:
    raw = read_avazu(data_dir / "avazu" / "test-1k-noheader.csv")
    assert len(raw) == 1000 and int(raw.labels.sum()) == 143 and distinct(raw.sparse["site_id"]) == 132
    assert raw.labels[0] == 1 and raw.sparse["site_id"][0] == "1fbe01fe"


def test_avazu_hour_derivation(tmp_path: Path) -> None:
    path = tmp_path / "hours.csv"
    rest = ",".join(["1005", "0", *"abcdefghi", "1", "2", *"12345678"])
    path.write_text("\n".join(f"{i},{i % 2},{hour},{rest}" for i, hour in
                              enumerate(["14102100", "14102623", "14103013"])) + "\n")
    raw = read_avazu(path)
    assert raw.sparse["hour_of_day"].tolist() == ["0", "23", "13"]
    assert raw.sparse["weekday"].tolist() == ["Tue", "Sun", "Thu"]


def test_movielens_100k(movielens: RawColumns) -> None:
    raw = movielens
    assert len(raw) == 100_000 and raw.schema == MOVIELENS_100K_SCHEMA
    assert int(raw.labels.sum()) == 55_375                  # ratings >= 4
    assert distinct(raw.sparse["user_id"]) == 943 and distinct(raw.sparse["item_id"]) == 1682
    assert (distinct(raw.sparse["age"]), distinct(raw.sparse["gender"]), distinct(raw.sparse["occupation"])) == (
        7, 2, 21)
    assert (distinct(raw.sparse["zip"]), distinct(raw.sparse["zip_prefix"])) == (795, 382)
    assert int((raw.sparse["release_year"] == "").sum()) == 9
    assert int((raw.sparse["gender"] == "F").sum()) == 25_740
    # Row order of u.data: first row is user 196 (age 49, writer, zip 55105) rating Kolya (1997, Comedy) 3.
    first = {name: raw.sparse[name][0] for name in raw.schema.sparse}
    assert first == {"user_id": "196", "item_id": "242", "age": "45-49", "gender": "M", "occupation": "writer",
                     "zip": "55105", "zip_prefix": "551", "release_year": "1997"}
    assert raw.labels[0] == 0 and raw.multivalued["genres"][0] == ["Comedy"]
    assert max(len(g) for g in raw.multivalued["genres"]) == 6
    assert raw.schema.multivalued == (MultiValuedField("genres", "|", max_len=6),)


def test_movielens_min_rating(data_dir: Path) -> None:
    raw = read_movielens_100k(data_dir / "movielens" / "ml-100k", min_rating=3)
    assert int(raw.labels.sum()) == 82_520
    with pytest.raises(ValueError, match="min_rating"):
        read_movielens_100k(data_dir / "movielens" / "ml-100k", min_rating=6)


def test_read_data_dispatch(data_dir: Path, criteo_10k: RawColumns) -> None:
    raw = read_data(data_dir / "criteo-1tb" / "sample-1k.txt", "criteo-1tb")
    assert len(raw) == 1000
    assert len(read_data(data_dir / "avazu" / "test-1k-noheader.csv", "avazu")) == 1000
    # A schema with a fixed format selects columns.
    subset = Schema(label="label", sparse=("C1", "C2"), dense=("I1",))
    small = read_data(data_dir / "criteo" / "train-10k.txt", "criteo", subset)
    assert small.schema == subset and set(small.sparse) == {"C1", "C2"} and set(small.dense) == {"I1"}
    assert np.array_equal(small.sparse["C1"], criteo_10k.sparse["C1"])
    with pytest.raises(ValueError, match="C99"):
        read_data(data_dir / "criteo" / "train-10k.txt", "criteo", Schema(label="label", sparse=("C99",)))
    with pytest.raises(ValueError) as info:
        read_data(data_dir / "criteo" / "train-10k.txt", "criteo-kaggle")
    assert all(name in str(info.value) for name in FORMATS)
    with pytest.raises(ValueError, match="needs a schema"):
        read_data(data_dir / "criteo" / "train-10k.txt", "csv")
    assert set(FORMATS) == {"criteo", "criteo-1tb", "avazu", "movielens-100k", "movielens-1m", "libfm", "csv", "tsv",
                            "parquet"}


# --------------------------------------------------------------------------- libFM


def test_libfm_fixture() -> None:
    raw = read_libfm(FIXTURES / "tiny.libfm")
    assert len(raw) == 50 and int(raw.labels.sum()) == 15            # 15 x "1", 35 x "-1"
    assert raw.schema.sparse == ("f1", "f2", "f3") and raw.schema.label == "label"
    assert [distinct(raw.sparse[f]) for f in ("f1", "f2", "f3")] == [5, 8, 3]
    assert [raw.sparse[f][0] for f in ("f1", "f2", "f3")] == ["1", "17", "101"] and raw.labels[0] == 1
    assert int((raw.sparse["f1"] == "1").sum()) == 13
    assert len(read_data(FIXTURES / "tiny.libfm", "libfm")) == 50


def test_libfm_label_spellings_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "floats.libfm"
    path.write_text("1.0 3:1 7:1\n-1.0 4:1 7:1\n0 3:1 8:1.0\n+1 5:1 8:1\n\n")
    assert read_libfm(path).labels.tolist() == [1, 0, 0, 1]

    ragged = tmp_path / "ragged.libfm"
    ragged.write_text("1 3:1 7:1\n-1 4:1 7:1\n-1 4:1\n")
    assert_bad(lambda: read_libfm(ragged), ragged, 3, "f2", "expected a label and 2 idx:val tokens, got 1")
    assert_bad(lambda: read_libfm(ragged, num_fields=3), ragged, 1, None, "got 2 tokens")

    label = tmp_path / "label.libfm"
    label.write_text("1 3:1\n2 4:1\n")
    assert_bad(lambda: read_libfm(label), label, 2, "label", "got '2'")

    token = tmp_path / "token.libfm"
    token.write_text("1 3:1 5:1\n1 3:1 5:0.5\n")
    assert_bad(lambda: read_libfm(token), token, 2, "f2", "'5:0.5'")
    empty = tmp_path / "empty.libfm"
    empty.write_text("\n\n")
    assert_bad(lambda: read_libfm(empty), empty, None, None, "empty")


# --------------------------------------------------------------------------- generic tables


SCHEMA = Schema(label="y", sparse=("city", "ad"), dense=("price",), multivalued=(MultiValuedField("tags", ";"),))


def test_read_table_csv_tsv(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('ad,y,extra_unused,price,city,tags\n7,1,x,2.5,"Paris, FR",a;b\n8,0,x,,,\n')
    with pytest.raises(DataFormatError, match=r"unexpected columns \['extra_unused'\]"):
        read_table(path, SCHEMA)
    raw = read_table(path, SCHEMA, ignore_extra=True)
    assert raw.labels.tolist() == [1, 0] and raw.sparse["city"].tolist() == ["Paris, FR", ""]
    assert raw.sparse["ad"].tolist() == ["7", "8"] and raw.dense["price"][0] == 2.5 and np.isnan(raw.dense["price"][1])
    assert raw.multivalued["tags"] == [["a", "b"], []]
    tsv = tmp_path / "t.tsv"
    tsv.write_text("1\tParis\t7\t2.5\ta;b\n0\tRome\t8\t1\tc\n")           # schema.columns order
    raw = read_table(tsv, SCHEMA, header=False)
    assert raw.sparse["city"].tolist() == ["Paris", "Rome"] and raw.dense["price"].tolist() == [2.5, 1.0]


def test_read_table_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"y": [1, 0, 1], "city": ["Paris", None, "Rome"], "ad": [7, 8, 9],
                             "price": [2.5, None, 1.0], "tags": [["a", "b"], [], None]}), path)
    raw = read_table(path, SCHEMA)
    assert raw.labels.tolist() == [1, 0, 1] and raw.labels.dtype == np.float32
    assert raw.sparse["city"].tolist() == ["Paris", "", "Rome"] and raw.sparse["ad"].tolist() == ["7", "8", "9"]
    assert raw.dense["price"][0] == 2.5 and np.isnan(raw.dense["price"][1])
    assert raw.multivalued["tags"] == [["a", "b"], [], []]
    assert len(read_data(path, "parquet", SCHEMA)) == 3
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"y": [1, 2], "city": ["a", "b"], "ad": [1, 2], "price": [1.0, 2.0],
                             "tags": ["a", "b"]}), bad)
    assert_bad(lambda: read_table(bad, SCHEMA), bad, 2, "y", "label must be 0 or 1")
    missing = tmp_path / "missing.parquet"
    pq.write_table(pa.table({"y": [1], "city": ["a"], "ad": [1], "tags": ["a"]}), missing)
    assert_bad(lambda: read_table(missing, SCHEMA), missing, None, None, "missing columns ['price']")
    not_parquet = tmp_path / "text.parquet"
    not_parquet.write_text("y,city\n1,a\n")
    assert_bad(lambda: read_table(not_parquet, SCHEMA), not_parquet, None, None, "Parquet")


# --------------------------------------------------------------------------- broken files


def criteo_row(label: str = "0", dense: str = "5", category: str = "68fd1e64") -> list[str]:
    return [label, *([dense] * 13), *([category] * 26)]


def write_rows(path: Path, rows: list[list[str]], delimiter: str = "\t", header: list[str] | None = None) -> Path:
    lines = ([delimiter.join(header)] if header else []) + [delimiter.join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_criteo_bad_label(tmp_path: Path) -> None:
    rows = [criteo_row() for _ in range(20)]
    rows[11][0] = "2"
    path = write_rows(tmp_path / "label.txt", rows)
    message = assert_bad(lambda: read_criteo(path), path, 12, "label")
    assert message.endswith("line 12, column 'label': label must be 0 or 1, got '2'")


def test_criteo_wrong_column_count(tmp_path: Path) -> None:
    rows = [criteo_row() for _ in range(5)]
    rows[2] = rows[2][:-1]
    path = write_rows(tmp_path / "short.txt", rows)
    assert_bad(lambda: read_criteo(path), path, 3, "C26", "expected 40 fields")
    rows = [criteo_row() for _ in range(5)]
    rows[4] = [*rows[4], "extra"]
    path = write_rows(tmp_path / "long.txt", rows)
    assert_bad(lambda: read_criteo_1tb(path), path, 5, None, "1 extra field")


def test_criteo_bad_dense_value(tmp_path: Path) -> None:
    rows = [criteo_row() for _ in range(4)]
    rows[1][5] = "abc"                                      # I5
    path = write_rows(tmp_path / "dense.txt", rows)
    assert_bad(lambda: read_criteo(path), path, 2, "I5", "got 'abc'")
    rows[1][5] = "inf"
    path = write_rows(tmp_path / "inf.txt", rows)
    assert_bad(lambda: read_criteo(path), path, 2, "I5", "finite")


def test_criteo_csv_header_missing_and_extra_columns(tmp_path: Path) -> None:
    names = ["label", *CRITEO_SCHEMA.dense, *CRITEO_SCHEMA.sparse]
    path = write_rows(tmp_path / "missing.csv", [criteo_row()[:-1]], ",", names[:-1])
    assert_bad(lambda: read_criteo(path), path, 1, None, "missing columns ['C26']")
    path = write_rows(tmp_path / "extra.csv", [[*criteo_row(), "x"]], ",", [*names, "C27"])
    assert_bad(lambda: read_criteo(path), path, 1, None, "unexpected columns ['C27']")
    path = write_rows(tmp_path / "only_header.csv", [], ",", names)
    assert_bad(lambda: read_criteo(path), path, 1, None, "no data rows")
    # The header is line 1: the second data row is line 3.
    rows = [criteo_row(), criteo_row(dense="x")]
    path = write_rows(tmp_path / "header_lines.csv", rows, ",", names)
    assert_bad(lambda: read_criteo(path), path, 3, "I1", "got 'x'")


def test_empty_and_undecodable_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    for call in (lambda: read_criteo(empty), lambda: read_criteo_1tb(empty), lambda: read_avazu(empty),
                 lambda: read_table(empty, SCHEMA, format="csv")):
        assert_bad(call, empty, None, None, "empty")
    path = write_rows(tmp_path / "bytes.txt", [criteo_row() for _ in range(5)])
    data = path.read_bytes().split(b"\n")
    data[3] = data[3].replace(b"68fd1e64", b"68fd\xff1e64", 1)
    path.write_bytes(b"\n".join(data))
    assert_bad(lambda: read_criteo(path), path, 4, None, "cannot decode byte 0xff")
    assert_bad(lambda: read_criteo_1tb(path), path, 4, None, "utf-8")


def test_avazu_bad_hour_and_label(tmp_path: Path) -> None:
    rest = ",".join(["1005", "0", *"abcdefghi", "1", "2", *"12345678"])
    path = tmp_path / "hour.csv"
    path.write_text(f"1,0,14102100,{rest}\n2,0,14133100,{rest}\n")
    assert_bad(lambda: read_avazu(path), path, 2, "hour", "14133100")
    path = tmp_path / "click.csv"
    path.write_text(f"id,click,hour,{','.join(AVAZU_SCHEMA.sparse[2:])}\n1,0,14102100,{rest}\n2,yes,14102100,{rest}\n")
    assert_bad(lambda: read_avazu(path), path, 3, "click", "got 'yes'")


def test_read_table_bad_quote_and_count(tmp_path: Path) -> None:
    path = tmp_path / "quote.csv"
    path.write_text('y,city,ad,price,tags\n1,a,1,1,x\n1,"b"c,1,1,x\n')
    assert_bad(lambda: read_table(path, SCHEMA), path, 3, None, "cannot split")
    path = tmp_path / "count.csv"
    path.write_text("y,city,ad,price,tags\n1,a,1,1,x\n1,a,1\n")
    assert_bad(lambda: read_table(path, SCHEMA), path, 3, "price", "expected 5 fields")
    with pytest.raises(ValueError, match="suffix"):
        read_table(tmp_path / "table.dat", SCHEMA)


def test_movielens_broken_join(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\n\n")
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|T8H1N\n")
    (folder / "u.item").write_bytes("1|Toy Story (1995)|01-Jan-1995||http://x|0|0|1\n"
                                    "2|Misérables (1995)||||0|1|1\n".encode("latin-1"))
    (folder / "u.data").write_text("1\t2\t5\t881250949\n2\t1\t3\t891717742\n")
    raw = read_movielens_100k(folder)
    assert raw.labels.tolist() == [1, 0] and raw.multivalued["genres"] == [["Action", "Comedy"], ["Comedy"]]
    assert raw.sparse["release_year"].tolist() == ["", "1995"] and raw.sparse["zip_prefix"].tolist() == ["857", "T8H"]
    assert raw.sparse["age"].tolist() == ["18-24", "50-55"]

    (folder / "u.data").write_text("1\t2\t5\t881250949\n3\t1\t3\t891717742\n")
    assert_bad(lambda: read_movielens_100k(folder), folder / "u.data", 2, "user_id", "'3' is not in")
    (folder / "u.data").write_text("1\t2\t5\t881250949\n2\t1\t6\t891717742\n")
    assert_bad(lambda: read_movielens_100k(folder), folder / "u.data", 2, "rating", "1..5")
    (folder / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||http://x|0|0|1\n2|Heat|||x|0|yes|1\n")
    assert_bad(lambda: read_movielens_100k(folder), folder / "u.item", 2, "Action", "got 'yes'")

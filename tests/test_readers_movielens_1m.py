"""The MovieLens-1M reader (``--format movielens-1m``) on the shared data and on tiny, broken folders."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from _reader_helpers import assert_bad, distinct
from ihas_lightning.data.readers import read_data
from ihas_lightning.data.readers_movielens import MOVIELENS_1M_SCHEMA, read_movielens_1m


def test_movielens_1m(data_dir: Path) -> None:
    folder = data_dir / "movielens" / "ml-1m-first3k"
    raw = read_data(folder, "movielens-1m")     # read speed: benchmarks, not tests (about 0.5 s with pyarrow)
    assert len(raw) == 487_650 and raw.schema == MOVIELENS_1M_SCHEMA
    assert int(raw.labels.sum()) == 279_124                 # ratings >= 4: 57.2%
    assert distinct(raw.sparse["user_id"]) == 2999 and distinct(raw.sparse["movie_id"]) == 3615
    assert (distinct(raw.sparse["age"]), distinct(raw.sparse["gender"]), distinct(raw.sparse["occupation"])) == (
        7, 2, 21)
    assert (distinct(raw.sparse["zip"]), distinct(raw.sparse["zip_prefix"])) == (2006, 527)
    assert distinct(raw.sparse["release_year"]) == 81 and int((raw.sparse["release_year"] == "").sum()) == 0
    assert int((raw.sparse["gender"] == "F").sum()) == 115_915
    # First line of ratings.dat: user 1 (F, age code 1, occupation 10, zip 48067) gives movie 1193 (One Flew
    # Over the Cuckoo's Nest (1975), Drama) 5 stars.
    first = {name: raw.sparse[name][0] for name in raw.schema.sparse}
    assert first == {"user_id": "1", "movie_id": "1193", "age": "1-17", "gender": "F", "occupation": "10",
                     "zip": "48067", "zip_prefix": "480", "release_year": "1975"}
    assert raw.labels[0] == 1 and raw.multivalued["genres"][0] == ["Drama"]
    assert max(len(g) for g in raw.multivalued["genres"]) == 6
    assert raw.source == str(folder / "ratings.dat.gz")


def write_movielens_1m(folder: Path, ratings: str, *, users: str | None = None, movies: str | None = None,
                       gzipped: bool = False) -> Path:
    """A tiny MovieLens-1M folder: 2 users, 3 movies (one title in latin-1), the given ratings.dat lines."""
    folder.mkdir(exist_ok=True)
    (folder / "users.dat").write_text(users or "1::F::1::10::48067\n2::M::56::16::70072-1234\n")
    (folder / "movies.dat").write_bytes((movies or "1::Toy Story (1995)::Animation|Children's|Comedy\n"
                                                   "2::Misérables, Les (1995)::Drama|War\n"
                                                   "3::Untitled::\n").encode("latin-1"))
    for stale in ("ratings.dat", "ratings.dat.gz"):
        (folder / stale).unlink(missing_ok=True)
    if gzipped:
        (folder / "ratings.dat.gz").write_bytes(gzip.compress(ratings.encode()))
    else:
        (folder / "ratings.dat").write_text(ratings)
    return folder


def test_movielens_1m_tiny_files(tmp_path: Path) -> None:
    ratings = "1::2::5::978300760\n2::1::3::978302109\n\n2::3::4::978301968\n"
    raw = read_movielens_1m(write_movielens_1m(tmp_path / "ml", ratings, gzipped=True))
    assert raw.labels.tolist() == [1, 0, 1]
    assert raw.sparse["movie_id"].tolist() == ["2", "1", "3"] and raw.sparse["user_id"].tolist() == ["1", "2", "2"]
    assert raw.sparse["age"].tolist() == ["1-17", "56+", "56+"]          # the codes as ML-100K's buckets
    assert raw.sparse["zip"].tolist()[1] == "70072-1234" and raw.sparse["zip_prefix"].tolist()[1] == "700"
    assert raw.sparse["release_year"].tolist() == ["1995", "1995", ""]    # no "(YYYY)" at the title's end
    assert raw.multivalued["genres"] == [["Drama", "War"], ["Animation", "Children's", "Comedy"], []]
    assert read_movielens_1m(tmp_path / "ml", min_rating=5).labels.tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="min_rating"):
        read_movielens_1m(tmp_path / "ml", min_rating=0)
    # CRLF line ends and a rating spelled "05" take the line-by-line path: the same rows.
    crlf = read_movielens_1m(write_movielens_1m(tmp_path / "ml", ratings.replace("\n", "\r\n")))
    spelled = read_movielens_1m(write_movielens_1m(tmp_path / "ml", ratings.replace("::5::", "::05::")))
    for other in (crlf, spelled):
        assert other.labels.tolist() == raw.labels.tolist() and other.multivalued == raw.multivalued
        assert all(other.sparse[n].tolist() == raw.sparse[n].tolist() for n in MOVIELENS_1M_SCHEMA.sparse)


@pytest.mark.parametrize("gzipped", [False, True])
def test_movielens_1m_bad_ratings(tmp_path: Path, gzipped: bool) -> None:
    folder = tmp_path / "ml"
    name = "ratings.dat.gz" if gzipped else "ratings.dat"

    def bad(second_line: str, column: str | None, text: str) -> None:
        write_movielens_1m(folder, f"1::1::5::978300760\n{second_line}\n", gzipped=gzipped)
        assert_bad(lambda: read_movielens_1m(folder), folder / name, 2, column, text)

    bad("1::2::5", "timestamp", "expected 4 fields separated by '::', got 3")
    bad("1::2::5::978300760::9", None, "1 extra field")
    bad("1::2::five::978300760", "rating", "expected an integer, got 'five'")
    bad("1::2::6::978300760", "rating", "rating must be 1..5, got 6")
    bad("1::2::0::978300760", "rating", "rating must be 1..5, got 0")
    bad("3::2::4::978300760", "user_id", "id '3' is not in")
    bad("1::9::4::978300760", "movie_id", "id '9' is not in")
    message = assert_bad(lambda: read_movielens_1m(folder), folder / name, 2, "movie_id", "movies.dat")
    assert str(folder / "movies.dat") in message


def test_movielens_1m_bad_tables_and_missing_files(tmp_path: Path) -> None:
    folder = write_movielens_1m(tmp_path / "ml", "1::1::5::978300760\n",
                                users="1::F::1::10::48067\n2::M::30::16::70072\n")
    assert_bad(lambda: read_movielens_1m(folder), folder / "users.dat", 2, "age", "codes 1, 18, 25, 35, 45, 50, 56")
    write_movielens_1m(folder, "1::1::5::978300760\n", users="1::F::1::10::48067\n1::M::56::16::70072\n")
    assert_bad(lambda: read_movielens_1m(folder), folder / "users.dat", 2, "user_id", "repeats line 1")
    write_movielens_1m(folder, "1::1::5::978300760\n", movies="1::Toy Story (1995)\n")
    assert_bad(lambda: read_movielens_1m(folder), folder / "movies.dat", 1, "genres", "got 2")
    write_movielens_1m(folder, "")
    assert_bad(lambda: read_movielens_1m(folder), folder / "ratings.dat", None, None, "empty")

    write_movielens_1m(folder, "1::1::5::978300760\n")
    (folder / "ratings.dat.gz").write_bytes(gzip.compress(b"1::1::5::978300760\n"))
    with pytest.raises(ValueError, match="both ratings.dat and ratings.dat.gz"):
        read_movielens_1m(folder)
    (folder / "ratings.dat").unlink()
    assert len(read_movielens_1m(folder)) == 1
    (folder / "movies.dat").unlink()
    with pytest.raises(FileNotFoundError, match=r"ml' has no movies.dat \(nor movies.dat.gz\)"):
        read_movielens_1m(folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_data(tmp_path / "nothing", "movielens-1m")

"""Readers for MovieLens: 100K (``u.data`` with ``u.user``, ``u.item``, ``u.genre``) and 1M (``ratings.dat``
with ``users.dat``, ``movies.dat``).

Both join the ratings with their user and movie tables in the ratings' row order and give the same fields
with the same meaning (label ``rating >= min_rating``, bucketed age, zip and its 3-character prefix, release
year, multi-valued genres), so that a model or a setting can move between the two.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ihas_lightning.data.readers_io import (
    PathLike,
    open_binary,
    read_rows,
    read_separated_rows,
    select_columns,
    split_multivalued,
    to_sparse,
)
from ihas_lightning.data.schema import DataFormatError, MultiValuedField, RawColumns, Schema

__all__ = [
    "MOVIELENS_100K_SCHEMA",
    "MOVIELENS_1M_SCHEMA",
    "MOVIELENS_1M_FILES",
    "movielens_1m_files",
    "read_movielens_100k",
    "read_movielens_1m",
]

#: MovieLens-100K joined with its user and item tables; label = rating >= min_rating.
MOVIELENS_100K_SCHEMA = Schema(
    label="label",
    sparse=("user_id", "item_id", "age", "gender", "occupation", "zip", "zip_prefix", "release_year"),
    multivalued=(MultiValuedField("genres", "|", max_len=6),),
)

#: MovieLens-1M joined with ``users.dat`` and ``movies.dat``: the 100K fields, ``movie_id`` for ``item_id``.
MOVIELENS_1M_SCHEMA = Schema(
    label="label",
    sparse=("user_id", "movie_id", "age", "gender", "occupation", "zip", "zip_prefix", "release_year"),
    multivalued=(MultiValuedField("genres", "|", max_len=6),),
)

#: The files of a MovieLens-1M folder; each may also be gzipped (``ratings.dat.gz``).
MOVIELENS_1M_FILES = ("ratings.dat", "users.dat", "movies.dat")

_ML1M_AGE_CODES = (1, 18, 25, 35, 45, 50, 56)
_ML1M_RATING_COLUMNS = ("user_id", "movie_id", "rating", "timestamp")
_YEAR_AT_TITLE_END = re.compile(r"\((\d{4})\)$")


def _age_bucket(age: int) -> str:
    """MovieLens-1M's age groups, so that 61 raw ages (several seen once) share 7 well-trained embeddings
    and features mean the same in ML-100K and ML-1M."""
    for upper, name in ((18, "1-17"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55")):
        if age < upper:
            return name
    return "56+"


def _star_ratings(values: list[str], lines: list[int], source: str) -> np.ndarray:
    """Integer ratings 1-5 of a ratings file; a bad one names its file, line and column."""
    ratings = np.array([_int_field(v, source, line, "rating") for v, line in zip(values, lines)])
    bad = np.flatnonzero((ratings < 1) | (ratings > 5))
    if bad.size:
        i = int(bad[0])
        raise DataFormatError(f"rating must be 1..5, got {ratings[i]}", source=source, line=lines[i],
                              column="rating")
    return ratings


def _int_field(value: str, source: str, line: int, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataFormatError(f"expected an integer, got {value!r}", source=source, line=line,
                              column=column) from None


def _unique_index(ids: Sequence[str], lines: Sequence[int], source: str, column: str) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, key in enumerate(ids):
        if key in index:
            raise DataFormatError(f"id {key!r} repeats line {lines[index[key]]}", source=source, line=lines[i],
                                  column=column)
        index[key] = i
    return index


def read_movielens_100k(directory: PathLike, *, min_rating: int = 4) -> RawColumns:
    """MovieLens-100K ``u.data`` joined with ``u.user``, ``u.item`` and ``u.genre``, in ``u.data``'s row order.

    Label: ``rating >= min_rating``. ``age`` is bucketed (see :func:`_age_bucket`); ``zip_prefix`` is the
    first three characters of the zip code (the US sectional center, a coarser location than ``zip``'s 795
    values); ``release_year`` comes from the release date (``""`` when missing); ``genres`` from the flags.
    """
    if not 1 <= min_rating <= 5:
        raise ValueError(f"min_rating must be within the ratings 1..5, got {min_rating}")
    folder = Path(directory)
    genre_rows = read_rows(folder / "u.genre", delimiter="|", quoted=False)
    genre_cols, genre_lines = select_columns(genre_rows, ("name", "index"), header=False)
    genre_order = [_int_field(v, genre_rows.source, line, "index") for v, line in zip(genre_cols["index"],
                                                                                        genre_lines)]
    genres = [name for _, name in sorted(zip(genre_order, genre_cols["name"]))]

    user_table = read_rows(folder / "u.user", delimiter="|", quoted=False)
    users, user_lines = select_columns(user_table, ("user_id", "age", "gender", "occupation", "zip"), header=False)
    user_index = _unique_index(users["user_id"], user_lines, user_table.source, "user_id")
    ages = [_age_bucket(_int_field(v, user_table.source, line, "age")) for v, line in zip(users["age"], user_lines)]

    # u.item is latin-1 (titles such as "Misérables"); quoting off because titles hold bare '"'.
    item_table = read_rows(folder / "u.item", delimiter="|", quoted=False, encoding="latin-1")
    item_names = ("item_id", "title", "release_date", "video_release_date", "url", *genres)
    items, item_lines = select_columns(item_table, item_names, header=False)
    item_index = _unique_index(items["item_id"], item_lines, item_table.source, "item_id")
    years = []
    for value, line in zip(items["release_date"], item_lines):
        year = value.strip()[-4:]
        if value.strip() and not (year.isdigit() and value.strip()[-5:-4] == "-"):
            raise DataFormatError(f"expected a date like 01-Jan-1995, got {value!r}", source=item_table.source,
                                  line=line, column="release_date")
        years.append(year)
    flags = np.empty((len(item_lines), len(genres)), dtype=bool)
    for k, genre in enumerate(genres):
        column = items[genre]
        bad = next((i for i, v in enumerate(column) if v not in ("0", "1")), None)
        if bad is not None:
            raise DataFormatError(f"genre flag must be 0 or 1, got {column[bad]!r}", source=item_table.source,
                                  line=item_lines[bad], column=genre)
        flags[:, k] = np.asarray(column) == "1"
    item_genres = [[genres[k] for k in np.flatnonzero(row)] for row in flags]

    data_table = read_rows(folder / "u.data", delimiter="\t", quoted=False)
    data, lines = select_columns(data_table, ("user_id", "item_id", "rating", "timestamp"), header=False)
    source = data_table.source
    ratings = _star_ratings(data["rating"], lines, source)
    user_rows = _lookup(data["user_id"], user_index, lines, source, "user_id", user_table.source)
    item_rows = _lookup(data["item_id"], item_index, lines, source, "item_id", item_table.source)
    zips = users["zip"]
    sparse = {
        "user_id": to_sparse(data["user_id"]),
        "item_id": to_sparse(data["item_id"]),
        "age": to_sparse([ages[u] for u in user_rows]),
        "gender": to_sparse([users["gender"][u] for u in user_rows]),
        "occupation": to_sparse([users["occupation"][u] for u in user_rows]),
        "zip": to_sparse([zips[u] for u in user_rows]),
        "zip_prefix": to_sparse([zips[u][:3] for u in user_rows]),
        "release_year": to_sparse([years[i] for i in item_rows]),
    }
    return RawColumns(schema=MOVIELENS_100K_SCHEMA, labels=(ratings >= min_rating).astype(np.float32),
                      sparse=sparse, multivalued={"genres": [list(item_genres[i]) for i in item_rows]},
                      source=source)


def _lookup(keys: Sequence[str], index: dict[str, int], lines: Sequence[int], source: str, column: str,
            table: str) -> list[int]:
    try:
        return [index[key] for key in keys]
    except KeyError:
        i = next(i for i, key in enumerate(keys) if key not in index)
        raise DataFormatError(f"id {keys[i]!r} is not in {table}", source=source, line=lines[i],
                              column=column) from None


def movielens_1m_files(directory: PathLike) -> dict[str, Path]:
    """The path of each of :data:`MOVIELENS_1M_FILES` in ``directory``, plain or gzipped as found.

    A missing file is a ``FileNotFoundError`` naming it; one present both plain and gzipped is a ``ValueError``
    (which of the two is current cannot be told).
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"MovieLens-1M folder '{folder}' does not exist or is not a folder")
    files: dict[str, Path] = {}
    for name in MOVIELENS_1M_FILES:
        found = [path for path in (folder / name, folder / f"{name}.gz") if path.is_file()]
        if not found:
            raise FileNotFoundError(f"MovieLens-1M folder '{folder}' has no {name} (nor {name}.gz)")
        if len(found) > 1:
            raise ValueError(f"MovieLens-1M folder '{folder}' holds both {name} and {name}.gz: keep one")
        files[name] = found[0]
    return files


def read_movielens_1m(directory: PathLike, *, min_rating: int = 4) -> RawColumns:
    """MovieLens-1M ``ratings.dat`` joined with ``users.dat`` and ``movies.dat``, in ``ratings.dat``'s row order.

    The files are ``::``-separated latin-1, plain or gzipped (see :func:`movielens_1m_files`). The fields mean
    what :func:`read_movielens_100k`'s do: label ``rating >= min_rating``; ``age``'s codes (1, 18, ..., 56)
    become the same buckets; ``occupation`` is the 1M code (``"0"``..``"20"``) as given; ``zip_prefix`` is the
    zip's first three characters; ``release_year`` is the ``(YYYY)`` that ends a title (``""`` when none);
    ``genres`` is the ``|``-separated list. Timestamps are not used, as in 100K.
    """
    if not 1 <= min_rating <= 5:
        raise ValueError(f"min_rating must be within the ratings 1..5, got {min_rating}")
    files = movielens_1m_files(directory)
    user_table = read_separated_rows(files["users.dat"], "::", encoding="latin-1")
    users, user_lines = select_columns(user_table, ("user_id", "gender", "age", "occupation", "zip"), header=False)
    user_index = _unique_index(users["user_id"], user_lines, user_table.source, "user_id")
    ages = [_ml1m_age(v, user_table.source, line) for v, line in zip(users["age"], user_lines)]

    movie_table = read_separated_rows(files["movies.dat"], "::", encoding="latin-1")
    movies, movie_lines = select_columns(movie_table, ("movie_id", "title", "genres"), header=False)
    movie_index = _unique_index(movies["movie_id"], movie_lines, movie_table.source, "movie_id")
    years = [match.group(1) if (match := _YEAR_AT_TITLE_END.search(title.strip())) else ""
             for title in movies["title"]]
    movie_genres = split_multivalued(movies["genres"], "|")

    ratings = _ml1m_ratings_fast(files["ratings.dat"], users["user_id"], movies["movie_id"])
    if ratings is None:
        ratings = _ml1m_ratings_exact(files["ratings.dat"], user_index, movie_index, user_table.source,
                                      movie_table.source)
    user_ids, movie_ids, stars, user_rows, movie_rows = ratings
    zips = users["zip"]
    sparse = {
        "user_id": user_ids,
        "movie_id": movie_ids,
        "age": to_sparse(ages)[user_rows],
        "gender": to_sparse(users["gender"])[user_rows],
        "occupation": to_sparse(users["occupation"])[user_rows],
        "zip": to_sparse(zips)[user_rows],
        "zip_prefix": to_sparse([z[:3] for z in zips])[user_rows],
        "release_year": to_sparse(years)[movie_rows],
    }
    # The ratings of one movie share its genre list (read-only, as after RawColumns.take): copying 487k lists
    # would take longer than reading the file.
    return RawColumns(schema=MOVIELENS_1M_SCHEMA, labels=(stars >= min_rating).astype(np.float32), sparse=sparse,
                      multivalued={"genres": [movie_genres[i] for i in movie_rows.tolist()]},
                      source=str(files["ratings.dat"]))


def _ml1m_age(value: str, source: str, line: int) -> str:
    code = _int_field(value, source, line, "age")
    if code not in _ML1M_AGE_CODES:
        raise DataFormatError(f"age must be one of the codes {', '.join(map(str, _ML1M_AGE_CODES))}, got {value!r}",
                              source=source, line=line, column="age")
    return _age_bucket(code)


#: ratings.dat as (user ids, movie ids, ratings 1..5, row in users.dat, row in movies.dat), one entry per rating.
_Ratings = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _ml1m_ratings_exact(path: Path, user_index: dict[str, int], movie_index: dict[str, int], users_source: str,
                        movies_source: str) -> _Ratings:
    """``ratings.dat`` split line by line in Python (as the 100K reader does): any bad line is named."""
    table = read_separated_rows(path, "::", encoding="latin-1")
    data, lines = select_columns(table, _ML1M_RATING_COLUMNS, header=False)
    source = table.source
    stars = _star_ratings(data["rating"], lines, source)
    user_rows = _lookup(data["user_id"], user_index, lines, source, "user_id", users_source)
    movie_rows = _lookup(data["movie_id"], movie_index, lines, source, "movie_id", movies_source)
    return (to_sparse(data["user_id"]), to_sparse(data["movie_id"]), stars, np.asarray(user_rows, dtype=np.int64),
            np.asarray(movie_rows, dtype=np.int64))


def _ml1m_ratings_fast(path: Path, user_ids: Sequence[str], movie_ids: Sequence[str]) -> _Ratings | None:
    """``ratings.dat`` through pyarrow's CSV reader (``::`` -> tab), several times faster than splitting in Python.

    Returns None, leaving the file to :func:`_ml1m_ratings_exact` (which names the bad line), unless the result
    is sure to equal that one's: only ASCII without tabs or carriage returns (pyarrow would split on those), four
    fields on every line, ratings spelled ``1``..``5`` and ids found in ``users.dat``/``movies.dat``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv

    with open_binary(path) as handle:
        data = handle.read()
    if not data.isascii() or b"\t" in data or b"\r" in data:
        return None
    try:
        table = pa_csv.read_csv(
            pa.py_buffer(data.replace(b"::", b"\t")),
            read_options=pa_csv.ReadOptions(column_names=list(_ML1M_RATING_COLUMNS)),
            parse_options=pa_csv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pa_csv.ConvertOptions(column_types={n: pa.string() for n in _ML1M_RATING_COLUMNS}))
    except pa.ArrowInvalid:
        return None
    del data
    star_rows = pc.index_in(table["rating"], value_set=pa.array(["1", "2", "3", "4", "5"]))
    user_rows = pc.index_in(table["user_id"], value_set=pa.array(list(user_ids), pa.string()))
    movie_rows = pc.index_in(table["movie_id"], value_set=pa.array(list(movie_ids), pa.string()))
    if table.num_rows == 0 or any(rows.null_count for rows in (star_rows, user_rows, movie_rows)):
        return None
    return (table["user_id"].to_numpy(), table["movie_id"].to_numpy(),
            star_rows.to_numpy().astype(np.int64) + 1, user_rows.to_numpy().astype(np.int64),
            movie_rows.to_numpy().astype(np.int64))

"""The encoded cache follows the data's content, survives a killed preparation, and degenerate splits are refused.

Real data (Criteo and MovieLens-100K samples, cut to a few thousand rows and copied into ``tmp_path``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ihas_lightning.data.datamodule import CTRDataModule, remove_stale_temporaries, split_rows


def ready(dm: CTRDataModule) -> CTRDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture
def criteo_copy(data_dir: Path, tmp_path: Path) -> Path:
    """The first 2000 rows of the Criteo sample, in a file of our own."""
    lines = (data_dir / "criteo" / "train-10k.txt").read_text().splitlines(keepends=True)[:2000]
    path = tmp_path / "data" / "criteo.txt"
    path.parent.mkdir()
    path.write_text("".join(lines))
    return path


def test_a_file_rewritten_in_place_with_the_same_size_and_mtime_is_read_again(criteo_copy: Path,
                                                                              tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = ready(CTRDataModule(str(criteo_copy), format="criteo", cache_dir=str(cache), seed=0))
    labels = np.concatenate([first.split(n).labels for n in ("train", "val", "test")])
    stat = criteo_copy.stat()
    flipped = ["10"[int(line[0])] + line[1:] for line in criteo_copy.read_text().splitlines(keepends=True)]
    with open(criteo_copy, "r+") as file:                      # in place: same inode, same size
        file.write("".join(flipped))
    os.utime(criteo_copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (criteo_copy.stat().st_size, criteo_copy.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    second = ready(CTRDataModule(str(criteo_copy), format="criteo", cache_dir=str(cache), seed=0))
    assert second.cache_dir != first.cache_dir
    relabeled = np.concatenate([second.split(n).labels for n in ("train", "val", "test")])
    np.testing.assert_array_equal(relabeled, 1.0 - labels)


def test_a_movielens_folder_whose_ratings_were_cut_in_place_is_read_again(data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ml-100k"
    shutil.copytree(data_dir / "movielens" / "ml-100k", folder)
    ratings = (folder / "u.data").read_text().splitlines(keepends=True)
    (folder / "u.data").write_text("".join(ratings[:3000]))
    cache = tmp_path / "cache"
    first = ready(CTRDataModule(str(folder), cache_dir=str(cache), seed=0))
    assert sum(len(first.split(n)) for n in ("train", "val", "test")) == 3000
    folder_stat = folder.stat()
    with open(folder / "u.data", "r+") as file:                # cut to 2000 rows; the folder's stat is unchanged
        file.truncate(len("".join(ratings[:2000]).encode()))
    assert folder.stat().st_mtime_ns == folder_stat.st_mtime_ns

    second = ready(CTRDataModule(str(folder), cache_dir=str(cache), seed=0))
    assert sum(len(second.split(n)) for n in ("train", "val", "test")) == 2000


def test_the_folder_of_a_killed_preparation_is_removed_by_the_next_one(criteo_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    killed = textwrap.dedent(f"""
        import os, signal
        from ihas_lightning.data import datamodule
        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        datamodule.save_encoded = die
        datamodule.CTRDataModule({str(criteo_copy)!r}, format="criteo", cache_dir={str(cache)!r}).prepare_data()
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", killed], env=env, capture_output=True, timeout=300)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    left = [p.name for p in cache.iterdir()]
    assert len(left) == 1 and re.fullmatch(rf"[0-9a-f]{{16}}\.tmp-{re.escape(socket.gethostname())}-\d+", left[0])

    dm = ready(CTRDataModule(str(criteo_copy), format="criteo", cache_dir=str(cache)))
    assert [p.name for p in cache.iterdir()] == [dm.cache_dir.name]
    assert len(dm.split("train")) == 1600


def test_only_dead_local_preparations_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host, fingerprint = socket.gethostname(), "0123456789abcdef"
    names = {"dead": f"{fingerprint}.tmp-{host}-{dead.pid}", "dead_legacy": f"{fingerprint}.tmp{dead.pid}",
             "alive": f"{fingerprint}.tmp-{host}-{os.getppid()}", "own": f"{fingerprint}.tmp-{host}-{os.getpid()}",
             "other_host": f"{fingerprint}.tmp-not-{host}-{dead.pid}", "cache": fingerprint,
             "not_ours": f"notes.tmp{dead.pid}"}
    for name in names.values():
        (tmp_path / name).mkdir()
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["dead_legacy"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        v for k, v in names.items() if k not in ("dead", "dead_legacy"))
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_a_validation_split_of_one_class_is_refused_with_its_counts(criteo_copy: Path, tmp_path: Path) -> None:
    lines = criteo_copy.read_text().splitlines(keepends=True)
    _, val_rows, _ = split_rows(len(lines), (0.1, 0.1), seed=0)
    for row in val_rows:
        lines[row] = "0" + lines[row][1:]
    criteo_copy.write_text("".join(lines))
    dm = CTRDataModule(str(criteo_copy), format="criteo", cache_dir=str(tmp_path / "cache"), seed=0)
    dm.prepare_data()
    with pytest.raises(ValueError, match=r"the val split of '.*criteo.txt' has 0 positive and 200 negative labels: "
                                         r"AUC needs both classes"):
        dm.setup("fit")
    other_seed = ready(CTRDataModule(str(criteo_copy), format="criteo", cache_dir=str(tmp_path / "cache"), seed=1))
    assert 0 < other_seed.split("val").labels.sum() < 200


def test_training_data_of_one_class_is_refused(criteo_copy: Path, tmp_path: Path) -> None:
    criteo_copy.write_text("".join("1" + line[1:] for line in criteo_copy.read_text().splitlines(keepends=True)))
    dm = CTRDataModule(str(criteo_copy), format="criteo", cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    with pytest.raises(ValueError, match=r"the train split of .* has 1600 positive and 0 negative labels"):
        dm.setup("fit")

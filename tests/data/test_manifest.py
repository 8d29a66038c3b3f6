from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deepmetric.data.contract import MANIFEST_COLUMNS
from deepmetric.data.images import ImageLimits
from deepmetric.data.manifest import BadFilesError, build_manifest, probe_files
from deepmetric.data.readers import read_dataset
from tests.data.layouts import make_cub, png_bytes, write_image


def _break(root, df):
    paths = df.path.tolist()
    (root / paths[0]).write_bytes(b"")
    (root / paths[1]).write_bytes(b"not an image at all")
    good = (root / paths[2]).read_bytes()
    (root / paths[2]).write_bytes(good[: len(good) // 3])
    (root / paths[3]).unlink()
    return paths[:4]


def test_manifest_columns_sizes_and_hashes(tmp_path):
    root = make_cub(tmp_path / "cub")
    df = read_dataset("cub", root)
    m, report = build_manifest(df, root, progress=False)
    assert tuple(m.columns) == MANIFEST_COLUMNS
    assert (m.width == 24).all() and (m.height == 20).all()
    assert m.sha256.str.fullmatch(r"[0-9a-f]{64}").all() and m.sha256.is_unique
    assert report["images"] == 12 and report["dropped"] == 0
    assert report["per_split"]["test"] == {"images": 6, "classes": 2}


def test_bad_files_fail_lists_every_path(tmp_path):
    root = make_cub(tmp_path / "cub")
    df = read_dataset("cub", root)
    bad = _break(root, df)
    with pytest.raises(BadFilesError) as e:
        build_manifest(df, root, bad_files="fail", progress=False)
    msg = str(e.value)
    assert "4 bad image file(s)" in msg and "data.bad_files: drop" in msg
    for p, reason in zip(bad, ["empty file", "not an image", "truncated", "file not found"]):
        assert f"{p}: {reason}" in msg


def test_bad_files_drop_warns_and_counts(tmp_path):
    root = make_cub(tmp_path / "cub")
    df = read_dataset("cub", root)
    bad = _break(root, df)
    with pytest.warns(UserWarning, match="dropping 4 bad image file"):
        m, report = build_manifest(df, root, bad_files="drop", progress=False)
    assert len(m) == 8 and not set(bad) & set(m.path)
    assert report["dropped"] == 4 and {d["path"] for d in report["dropped_files"]} == set(bad)


def test_bad_files_of_a_table_are_named_with_their_table_row(tmp_path):
    from tests.data.layouts import make_folder, write_table

    root = tmp_path / "shop"
    paths = make_folder(root, classes=["a", "b", "c"], per_class=2)
    (root / paths[4]).write_bytes(b"not an image at all")
    table = write_table(root / "items.csv", [{"path": p, "label": p.split("/")[0]} for p in paths]
                        + [{"path": "a/gone.jpg", "label": "a"}])
    df = read_dataset("shop", root, {"layout": "table", "table": str(table), "val_classes": 0})
    with pytest.raises(BadFilesError) as e:
        build_manifest(df, root, bad_files="fail", progress=False)
    msg = str(e.value)
    assert f"row 5: {paths[4]}: not an image" in msg and "row 7: a/gone.jpg: file not found" in msg
    assert f"listed by {table}" in msg
    with pytest.warns(UserWarning, match="row 7: a/gone.jpg: file not found"):
        _, report = build_manifest(df, root, bad_files="drop", progress=False)
    assert {d["path"]: d["row"] for d in report["dropped_files"]} == {paths[4]: 5, "a/gone.jpg": 7}


def test_bomb_and_escape(tmp_path):
    root = make_cub(tmp_path / "cub")
    df = read_dataset("cub", root)
    (root / df.path.iloc[0]).write_bytes(png_bytes((3000, 3000), 0, mode="L"))
    with pytest.raises(BadFilesError, match="decompression bomb"):
        build_manifest(df, root, limits=ImageLimits(max_pixels=1_000_000), progress=False)
    esc = df.copy()
    esc.loc[1, "path"] = "../../etc/passwd"
    with pytest.raises(BadFilesError, match="escapes the dataset root"):
        build_manifest(esc, root, bad_files="drop", limits=ImageLimits(max_pixels=None), progress=False)  # never droppable


def test_parallel_probe_matches_serial(tmp_path):
    paths = []
    for i in range(1100):
        rel = f"d/{i}.png"
        write_image(tmp_path / rel, seed=i, size=(8, 8), fmt="PNG")
        paths.append(rel)
    paths[7] = "d/missing.png"
    par = probe_files(tmp_path, paths, workers=2, progress=False)
    ser = probe_files(tmp_path, paths, workers=1, progress=False)
    assert par == ser and par[7][3] == "file not found" and par[0][:2] == (8, 8)


def test_thin_image_in_a_dataset_is_a_bad_file_named_with_the_limit(tmp_path):
    root = make_cub(tmp_path / "cub")
    df = read_dataset("cub", root)
    (root / df.path.iloc[0]).write_bytes(png_bytes((1, 100_000), 0, mode="L"))
    with pytest.raises(BadFilesError) as e:
        build_manifest(df, root, progress=False)
    assert f"{df.path.iloc[0]}: refused as too thin" in str(e.value) and "limit of 100:1" in str(e.value)
    with pytest.raises(BadFilesError, match="limit of 50:1"):
        build_manifest(df, root, progress=False, limits=ImageLimits(max_aspect_ratio=50))


_COUNT_FORKS = """
import os, sys
from deepmetric.data.manifest import probe_files
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:int(sys.argv[2])])
forks = []
os.register_at_fork(before=lambda: forks.append(1))
probe = probe_files(sys.argv[1], [f"m{i}.png" for i in range(1100)], workers=0, progress=False)
assert all(p.error == "file not found" for p in probe)
print(len(forks))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs a CPU affinity of at least 2 cores")
def test_workers_0_means_a_process_per_core_this_process_may_use(tmp_path):
    """``workers: 0`` is ``auto`` as in every ``processes`` parameter (deepmetric.runtime): one per core of the
    process's CPU affinity (a container's or taskset's limit), not one per core of the machine. Counted as the
    forks the decode makes: none on 1 allowed core (it runs in this process), one per core on 2."""
    def forks(cores: int) -> int:
        proc = subprocess.run([sys.executable, "-c", _COUNT_FORKS, str(tmp_path), str(cores)], capture_output=True,
                              text=True, check=True)
        return int(proc.stdout.strip())

    assert forks(1) == 0
    assert forks(2) == 2

from __future__ import annotations

import pandas as pd

from deepmetric.data.images import ImageLimits
from deepmetric.data.manifest import build_manifest
from deepmetric.data.readers import read_dataset
from deepmetric.validation import ValidateParams
from deepmetric.validation.files import check_files, sample_rows
from tests.data.layouts import make_folder


def _catalogue(root, classes=12, per_class=4):
    make_folder(root, classes=[f"c{i:02d}" for i in range(classes)], per_class=per_class)
    m, _ = build_manifest(read_dataset("p", root, {"layout": "folder"}), root, progress=False)
    return m


def test_sample_draw_is_fixed_by_the_manifest_and_covers_all_when_small():
    paths = [f"c/{i}.jpg" for i in range(100)]
    a = sample_rows(paths, 10)
    assert len(a) == 10 and list(a) == sorted(a) and list(sample_rows(paths, 10)) == list(a)
    assert list(sample_rows(paths[::-1], 10)) != list(a)  # another manifest, another draw
    assert list(sample_rows(paths, 500)) == list(range(100))


def test_all_rereads_every_file_and_sample_only_the_draw_but_stats_every_file(tmp_path):
    m = _catalogue(tmp_path)
    params = ValidateParams(decode_check="sample", decode_sample=5, workers=1)
    drawn = set(sample_rows(m.path.tolist(), 5))
    outside = next(i for i in range(len(m)) if i not in drawn)
    inside = sorted(drawn)[0]
    (tmp_path / m.path[outside]).write_bytes(b"garbage, not a jpeg")  # damaged outside the sample
    (tmp_path / m.path[inside]).write_bytes(b"")  # empty: found by the stat of every file
    gone = next(i for i in range(len(m)) if i not in drawn and i != outside)
    (tmp_path / m.path[gone]).unlink()
    files = check_files(m, str(tmp_path), params, ImageLimits(), progress=False)
    assert files.file_error[inside].startswith("empty file")
    assert files.file_error[gone] == "file not found"
    assert pd.isna(files.file_error[outside])  # what sample can miss (the docs say so)
    assert files.file_format.notna().sum() == 4 and files.file_format.dropna().eq("JPEG").all()
    full = check_files(m, str(tmp_path), ValidateParams(workers=1), ImageLimits(), progress=False)
    assert "not an image" in full.file_error[outside] and full.file_format.notna().sum() == len(m) - 3
    assert isinstance(full, pd.DataFrame) and list(full.index) == list(m.index)

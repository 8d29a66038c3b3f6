from __future__ import annotations

import json

import pandas as pd
import pytest

from deepmetric.data.manifest import build_manifest
from deepmetric.data.readers import read_dataset
from deepmetric.validation import ValidationFailed, failure_summary, validate_manifest
from tests.data.layouts import make_cub, make_inshop

NO_COUNTS = {"known_counts": False}


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = make_cub(tmp_path_factory.mktemp("v") / "CUB_200_2011", num_classes=6, per_class=3, appledouble=False)
    manifest, _ = build_manifest(read_dataset("cub", root, {"val_classes": 1}), root, progress=False)
    return root, manifest


def test_clean_manifest_passes_and_report_is_json(cub, tmp_path):
    root, m = cub
    report = validate_manifest(m, root, "cub", NO_COUNTS, docs_dir=tmp_path / "docs", progress=False)
    assert report["success"], failure_summary(report)
    assert report["checks_failed"] == 0 and report["checks_evaluated"] > 30
    json.dumps(report)
    assert (tmp_path / "docs" / "index.html").is_file()
    assert any((tmp_path / "docs" / "validations").rglob("*.html"))


def _mutate_split_leak(m, root):
    m.loc[m.label == 1, "split"] = ["train", "train", "test"]  # one class in two splits (and 1 image)
    return m


def _mutate_dup_bytes(m, root):
    a = m.index[m.split == "train"][0]
    b = m.index[m.split == "test"][0]
    (root / m.at[b, "path"]).write_bytes((root / m.at[a, "path"]).read_bytes())
    m.at[b, "sha256"] = m.at[a, "sha256"]
    return m


def _mutate_single_image_class(m, root):
    return m.drop(index=m.index[m.label == 6][:2])


def _mutate_corrupt(m, root):
    (root / m.path.iloc[0]).write_bytes(b"")
    return m


def _mutate_missing(m, root):
    (root / m.path.iloc[1]).unlink()
    return m


def _mutate_bad_split_value(m, root):
    m.loc[m.index[:3], "split"] = "training"
    return m


def _mutate_null(m, root):
    m["class_name"] = m["class_name"].astype(object)
    m.loc[m.index[0], "class_name"] = None
    return m


def _mutate_missing_column(m, root):
    return m.drop(columns=["sha256"])


def _mutate_small(m, root):
    m.loc[m.index[0], "width"] = 3
    return m


CASES = {
    "split_leak": (_mutate_split_leak, {"train/val/test class sets disjoint",
                                        ">= 2 images per class in every split"}),
    "dup_bytes": (_mutate_dup_bytes, {"no identical file bytes across splits (leakage)"}),
    "single_image_class": (_mutate_single_image_class, {">= 2 images per class in every split"}),
    "corrupt": (_mutate_corrupt, {"files present and decodable"}),
    "missing": (_mutate_missing, {"files present and decodable"}),
    "bad_split_value": (_mutate_bad_split_value, {"allowed values: split"}),
    "null": (_mutate_null, {"no nulls in 'class_name'"}),
    "missing_column": (_mutate_missing_column, {"schema: column 'sha256' present"}),
    "too_small": (_mutate_small, {"image width in [16, 10000]"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_bad_input_fails_its_check_with_examples(cub, tmp_path, case):
    import shutil

    root0, m0 = cub
    root = tmp_path / "copy"
    shutil.copytree(root0, root)
    mutate, expected = CASES[case]
    m = mutate(m0.copy(), root)
    report = validate_manifest(m, root, "cub", NO_COUNTS, progress=False)
    assert not report["success"]
    assert set(report["failed"]) == expected, report["failed"]
    summary = str(ValidationFailed(report))
    for check in expected:
        assert f"FAILED {check}" in summary
    failing = [c for c in report["checks"] if not c["success"] and "unexpected_count" in c]
    assert all(c["examples"] for c in failing)
    assert "e.g. {" in summary or case == "missing_column"


def test_failure_examples_name_the_paths(cub, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(cub[0], root)
    m = _mutate_dup_bytes(cub[1].copy(), root)
    report = validate_manifest(m, root, "cub", NO_COUNTS, progress=False)
    (leak,) = [c for c in report["checks"] if c["check"].startswith("no identical file bytes")]
    assert leak["unexpected_count"] == 2
    assert {e["split"] for e in leak["examples"]} == {"train", "test"}
    assert all((root / e["path"]).is_file() for e in leak["examples"])


def test_known_counts_catch_a_truncated_download(cub):
    root, m = cub
    report = validate_manifest(m, root, "cub", {}, progress=False)
    assert set(report["failed"]) == {"known image count of cub: 11788", "known class count of cub: 200",
                                     "known train+val class count of cub: 100", "known test class count of cub: 100"}
    summary = failure_summary(report)
    assert "observed 18" in summary and "observed 6" in summary


def test_inshop_roles(tmp_path):
    root = make_inshop(tmp_path / "inshop")
    m, _ = build_manifest(read_dataset("inshop", root), root, progress=False)
    assert validate_manifest(m, root, "inshop", NO_COUNTS, progress=False)["success"]
    m.loc[m.split == "test", "role"] = "both"
    report = validate_manifest(m, root, "inshop", NO_COUNTS, progress=False)
    assert report["failed"] == ["roles: test rows are query/gallery"]


def test_empty_dataframe_does_not_crash(tmp_path):
    m = pd.DataFrame({c: pd.Series([], dtype="int64" if c in ("label", "width", "height") else "str")
                      for c in ("path", "label", "class_name", "split", "role", "width", "height", "sha256", "dataset")})
    report = validate_manifest(m, tmp_path, "glyphs", {}, progress=False)
    assert not report["success"] and "train and test splits present" in report["failed"]


def test_thin_image_fails_validation_naming_the_file_and_limit(cub, tmp_path):
    import io
    import shutil

    from PIL import Image

    root = tmp_path / "copy"
    shutil.copytree(cub[0], root)
    m = cub[1].copy()
    buf = io.BytesIO()
    Image.new("L", (100_000, 1)).save(buf, "PNG")
    (root / m.path.iloc[2]).write_bytes(buf.getvalue())
    report = validate_manifest(m, root, "cub", NO_COUNTS, progress=False)
    assert report["failed"] == ["files present and decodable"]
    summary = failure_summary(report)
    assert m.path.iloc[2] in summary and "limit of 100:1 (parameter max_aspect_ratio)" in summary, summary

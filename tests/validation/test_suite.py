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


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    from tests.data.layouts import make_folder

    root = tmp_path_factory.mktemp("cat") / "products"
    make_folder(root, classes=[f"sku-{i}" for i in range(8)], per_class=3)
    records = read_dataset("products", root, {"layout": "folder", "val_classes": 1})
    manifest, _ = build_manifest(records, root, progress=False)
    return root, manifest


def _validate(root, m, tmp_path=None, **params):
    return validate_manifest(m, root, "products", {"workers": 1, **params},
                             docs_dir=None if tmp_path is None else tmp_path / "docs", progress=False)


def test_a_catalogue_validates_with_its_profile_in_the_report_and_the_data_docs(catalogue, tmp_path):
    root, m = catalogue
    report = _validate(root, m, tmp_path)
    assert report["success"] and report["warnings"] == [], failure_summary(report)
    assert not any(c["check"].startswith("known") for c in report["checks"])  # no published counts
    prof = report["profile"]
    assert prof["images_per_class"]["median"] == 3 and prof["images_per_class"]["histogram"]["3-5"] == 8
    assert prof["formats"] == {"JPEG": 24} and prof["width"]["max"] == 24
    info = {c["check"]: c for c in report["checks"] if c["severity"] == "info"}
    assert set(info) == {"profile: images per class", "profile: image sizes", "profile: image formats"}
    pages = "".join(p.read_text() for p in (tmp_path / "docs").rglob("*.html"))
    assert "Classes by images" in pages and "JPEG: 24" in pages


def test_same_bytes_under_two_classes_fail_naming_both_classes(catalogue, tmp_path):
    import shutil

    root, m = catalogue
    shutil.copytree(root, tmp_path / "copy")
    m = m.copy()
    test = m[m.split == "test"]
    a = test.index[0]
    b = test.index[test.label != test.at[a, "label"]][0]
    (tmp_path / "copy" / m.at[b, "path"]).write_bytes((tmp_path / "copy" / m.at[a, "path"]).read_bytes())
    m.at[b, "sha256"] = m.at[a, "sha256"]
    report = _validate(tmp_path / "copy", m)
    assert report["failed"] == ["one class per image: identical bytes under two classes (labelling error)"]
    summary = failure_summary(report)
    for i in (a, b):
        assert f"{m.at[i, 'class_name']} ({m.at[i, 'label']})" in summary


def test_duplicates_within_a_class_warn_without_failing(catalogue, tmp_path):
    import shutil

    from deepmetric.validation import warning_summary

    root, m = catalogue
    shutil.copytree(root, tmp_path / "copy")
    m = m.copy()
    a, b = m.index[m.class_name == "sku-2"][:2]
    (tmp_path / "copy" / m.at[b, "path"]).write_bytes((tmp_path / "copy" / m.at[a, "path"]).read_bytes())
    m.at[b, "sha256"] = m.at[a, "sha256"]
    report = _validate(tmp_path / "copy", m)
    check = "one copy per image: identical bytes twice in a class (duplicates inflate Recall@1)"
    assert report["success"] and report["failed"] == [] and report["warnings"] == [check]
    warned = warning_summary(report)
    assert f"WARNING {check}" in warned and m.at[b, "path"] in warned
    assert warning_summary(_validate(root, catalogue[1])) is None


def test_catalogue_boxes_categories_and_roles_are_checked(catalogue):
    root, m = catalogue
    boxed = m.assign(x_1=0.0, y_1=0.0, x_2=m.width.astype(float), y_2=m.height.astype(float), category="bags")
    assert _validate(root, boxed, check_files=False)["success"]
    bad = boxed.copy()
    bad.loc[bad.index[0], "x_2"] = 25.0  # images are 24 wide
    bad.loc[bad.index[1], "category"] = None
    report = _validate(root, bad, check_files=False)
    assert set(report["failed"]) == {"bounding boxes inside their images", "no nulls in 'category'"}
    assert "box (0, 0, 25, 20) outside the 24x20 image" in failure_summary(report)
    test = m.index[m.split == "test"]
    roles = m.copy()
    roles.loc[test, "role"] = "gallery"
    first_of_class = roles.loc[test].groupby("label").head(1).index
    roles.loc[first_of_class, "role"] = "query"
    assert _validate(root, roles, check_files=False)["success"]  # a separate gallery
    roles.loc[roles.index[(roles.split == "test") & (roles.role == "gallery")][:2], "role"] = "both"
    mixed = _validate(root, roles, check_files=False)
    assert mixed["failed"] == ["roles: test rows are query/gallery"]
    lonely = m.copy()
    lonely.loc[test, "role"] = "gallery"
    only_queries = lonely.loc[test, "label"] == lonely.loc[test, "label"].iloc[0]
    lonely.loc[test[only_queries.to_numpy()], "role"] = "query"
    assert _validate(root, lonely, check_files=False)["failed"] == ["every query class has gallery images"]


def test_sample_decode_check_is_reported(catalogue):
    root, m = catalogue
    report = _validate(root, m, decode_check="sample", decode_sample=4)
    assert report["success"] and report["profile"]["formats_of"] == 4


def test_a_folder_with_one_image_per_class_fails_naming_the_classes(tmp_path):
    """The folder reader accepts one image per class (a layout question); validation refuses it (a metric needs
    a second image of the class), naming each class and its split."""
    from tests.data.layouts import make_folder

    root = tmp_path / "products"
    make_folder(root, classes=[f"c{i}" for i in range(4)], per_class=1)
    m, _ = build_manifest(read_dataset("products", root, {"layout": "folder", "val_classes": 0}), root, progress=False)
    report = _validate(root, m, check_files=False)
    assert report["failed"] == [">= 2 images per class in every split"]
    summary = failure_summary(report)
    for name, split in zip(m.class_name, m.split):
        assert f'"class_name": "{name}"' in summary and f'"split": "{split}"' in summary, summary

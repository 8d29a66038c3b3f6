from __future__ import annotations

import json

import pytest

from deepmetric.validation import ValidationFailed
from tests.fixtures import STRICT_LIMITS, file_tree, make_tiny_glyphs, plant_image
from tests.pipelines.kedro_helpers import load_params, run_stage


def _params(root):
    data = load_params("ingest")["data"]
    data.update(root=str(root), workers=1)
    return {"data": data, **load_params("validate")}


def test_validate_passes_then_a_failure_leaves_validated_manifest_untouched(tmp_path):
    root = make_tiny_glyphs(tmp_path / "glyphs", num_classes=12)
    params = _params(root)
    run_stage("ingest", tmp_path, params)
    run_stage("validate", tmp_path, params)
    validated = tmp_path / "data/02_intermediate/manifest_validated.parquet"
    report_path = tmp_path / "data/08_reporting/validation.json"
    assert json.loads(report_path.read_text())["success"]
    assert (tmp_path / "data/08_reporting/validation_docs/index.html").is_file()
    before = validated.read_bytes()
    # The outputs (report, data docs, manifest) are a function of the inputs: GX's run time is the source date, the
    # seconds go beside the report (issue 23).
    outputs = file_tree(validated, report_path, tmp_path / "data/08_reporting/validation_docs")
    run_stage("validate", tmp_path, params)
    assert file_tree(validated, report_path, tmp_path / "data/08_reporting/validation_docs") == outputs
    assert set(json.loads((tmp_path / "data/08_reporting/timings/validate.json").read_text())) == {"seconds"}

    # Break one image after ingest: validate must stop the run, name the check and the file, write its
    # report and docs, and leave the previous validated manifest byte-identical.
    victim = sorted((root / "images").rglob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    with pytest.raises(Exception) as e:
        run_stage("validate", tmp_path, params)
    err = e.value
    while not isinstance(err, ValidationFailed) and err.__cause__ is not None:
        err = err.__cause__
    msg = str(e.value)
    assert "FAILED files present and decodable" in msg
    assert victim.relative_to(root).as_posix() in msg
    assert validated.read_bytes() == before
    report = json.loads(report_path.read_text())
    assert report["success"] is False and "files present and decodable" in report["failed"]
    assert (tmp_path / "data/08_reporting/validation_docs/index.html").is_file()


def test_validate_bad_params_named(tmp_path):
    root = make_tiny_glyphs(tmp_path / "glyphs", num_classes=12)
    params = _params(root)
    run_stage("ingest", tmp_path, params)
    params["validate"]["min_images_per_clas"] = 3
    with pytest.raises(Exception, match=r"validate.min_images_per_clas: unknown parameter"):
        run_stage("validate", tmp_path, params)
    assert not (tmp_path / "data/08_reporting/validation.json").exists()


@pytest.mark.parametrize("limit", sorted(STRICT_LIMITS))
def test_the_data_limits_reach_the_validate_decode(tmp_path, limit):
    """An image ingest accepted under the default limits fails the file check once data.max_pixels /
    data.max_aspect_ratio are set stricter: the summary names the file and the parameter; no validated
    manifest is written."""
    strict, size, words = STRICT_LIMITS[limit]
    root = make_tiny_glyphs(tmp_path / "glyphs", num_classes=12)
    victim = sorted((root / "images").rglob("*.png"))[5]
    plant_image(victim, size)
    params = _params(root)
    run_stage("ingest", tmp_path, params)
    params["data"].update(strict)
    with pytest.raises(Exception) as e:
        run_stage("validate", tmp_path, params)
    assert "FAILED files present and decodable" in str(e.value)
    assert victim.relative_to(root).as_posix() in str(e.value) and words in str(e.value)
    assert not (tmp_path / "data/02_intermediate/manifest_validated.parquet").exists()


def test_validate_a_catalogue_with_one_image_in_a_class_fails_naming_it(tmp_path):
    from tests.data.layouts import make_folder

    root = tmp_path / "products"
    make_folder(root, classes=[f"sku-{i}" for i in range(6)], per_class=3)
    lonely = root / "sku-3"
    for extra in sorted(lonely.iterdir())[1:]:
        extra.unlink()
    params = _params(root)
    params["data"].update(layout="folder", dataset="products")
    run_stage("ingest", tmp_path, params)
    with pytest.raises(Exception) as e:
        run_stage("validate", tmp_path, params)
    assert "FAILED >= 2 images per class in every split" in str(e.value) and "sku-3/000.jpg" in str(e.value)
    assert not (tmp_path / "data/02_intermediate/manifest_validated.parquet").exists()

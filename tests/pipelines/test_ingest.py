from __future__ import annotations

import json

import pandas as pd
import pytest

from deepmetric.data.contract import MANIFEST_COLUMNS
from tests.data.layouts import make_cars, make_sop
from tests.fixtures import STRICT_LIMITS, file_tree, make_tiny_glyphs, plant_image
from tests.pipelines.kedro_helpers import load_params, run_stage


def _data(root, **kw):
    d = load_params("ingest")["data"]
    d.update(root=str(root), workers=1, **kw)
    return {"data": d}


def test_ingest_glyphs(tmp_path):
    root = make_tiny_glyphs(tmp_path / "glyphs", num_classes=12)
    run_stage("ingest", tmp_path, _data(root))
    m = pd.read_parquet(tmp_path / "data/02_intermediate/manifest.parquet")
    assert tuple(m.columns) == MANIFEST_COLUMNS and (m.dataset == "glyphs").all()
    assert set(m.split) == {"train", "val", "test"}
    report = json.loads((tmp_path / "data/08_reporting/ingest.json").read_text())
    assert report["images"] == len(m) and report["dropped"] == 0
    # The outputs are a function of the inputs (DVC hashes them); the timings go beside them (issue 23).
    outputs = file_tree(tmp_path / "data/02_intermediate", tmp_path / "data/08_reporting/ingest.json")
    run_stage("ingest", tmp_path, _data(root))
    assert file_tree(tmp_path / "data/02_intermediate", tmp_path / "data/08_reporting/ingest.json") == outputs
    timings = json.loads((tmp_path / "data/08_reporting/timings/ingest.json").read_text())
    assert set(timings) == {"seconds", "images_per_second"} and not set(timings) & set(report)


@pytest.mark.parametrize("dataset,make", [("sop", make_sop), ("cars196", make_cars)])
def test_ingest_benchmark_layouts(tmp_path, dataset, make):
    root = make(tmp_path / dataset)
    run_stage("ingest", tmp_path, _data(root, dataset=dataset))
    m = pd.read_parquet(tmp_path / "data/02_intermediate/manifest.parquet")
    assert (m.dataset == dataset).all() and (m.width == 24).all()


def test_ingest_bad_file_fails_and_keeps_previous_manifest(tmp_path):
    root = make_tiny_glyphs(tmp_path / "glyphs", num_classes=12)
    run_stage("ingest", tmp_path, _data(root))
    out = tmp_path / "data/02_intermediate/manifest.parquet"
    before = out.read_bytes()
    victim = sorted((root / "images").rglob("*.png"))[3]
    victim.write_bytes(b"")
    with pytest.raises(Exception, match="empty file") as e:
        run_stage("ingest", tmp_path, _data(root))
    assert victim.relative_to(root).as_posix() in str(e.value)
    assert out.read_bytes() == before
    # The drop policy goes on without it, and says so in the report.
    with pytest.warns(UserWarning, match="dropping 1 bad image"):
        run_stage("ingest", tmp_path, _data(root, bad_files="drop"))
    report = json.loads((tmp_path / "data/08_reporting/ingest.json").read_text())
    assert report["dropped"] == 1 and report["dropped_files"][0]["reason"] == "empty file (0 bytes)"


def test_ingest_bad_params_named(tmp_path):
    with pytest.raises(Exception, match=r"data.bad_files = 'skip'"):
        run_stage("ingest", tmp_path, _data(tmp_path, bad_files="skip"))
    with pytest.raises(Exception, match=r"data.datset: unknown parameter"):
        run_stage("ingest", tmp_path, _data(tmp_path, datset="cub"))


@pytest.mark.parametrize("limit", sorted(STRICT_LIMITS))
def test_the_data_limits_reach_the_ingest_decode(tmp_path, limit):
    """data.max_pixels / data.max_aspect_ratio set stricter than their defaults refuse an image the defaults
    accept: the run stops naming the file and the parameter, and writes no manifest."""
    params, size, words = STRICT_LIMITS[limit]
    root = make_tiny_glyphs(tmp_path / "glyphs", num_classes=12)
    victim = sorted((root / "images").rglob("*.png"))[3]
    plant_image(victim, size)
    with pytest.raises(Exception) as e:
        run_stage("ingest", tmp_path, _data(root, **params))
    assert f"{victim.relative_to(root).as_posix()}: refused" in str(e.value) and words in str(e.value)
    assert not (tmp_path / "data/02_intermediate/manifest.parquet").exists()


def test_ingest_a_folder_catalogue_counts_what_it_skipped(tmp_path):
    from tests.data.layouts import make_folder

    root = tmp_path / "products"
    make_folder(root, classes=[f"sku-{i}" for i in range(6)], per_class=3, junk=True)
    run_stage("ingest", tmp_path, _data(root, layout="folder", dataset="products"))
    m = pd.read_parquet(tmp_path / "data/02_intermediate/manifest.parquet")
    assert tuple(m.columns) == MANIFEST_COLUMNS and (m.dataset == "products").all() and len(m) == 18
    report = json.loads((tmp_path / "data/08_reporting/ingest.json").read_text())
    assert (report["layout"], report["bbox"], report["formats"]) == ("folder", "crop", {"JPEG": 18})
    assert report["skipped"] == {"hidden": 12, "not an image (extension)": 6}


def test_ingest_a_table_with_boxes_and_categories(tmp_path):
    from tests.data.layouts import make_folder, write_table

    root = tmp_path / "shop"
    paths = make_folder(root, classes=["a", "b", "c", "d"], per_class=2, under="img")
    write_table(root / "items.csv", [{"path": p, "label": p.split("/")[1], "category": "x", "x_1": 1, "y_1": 1,
                                      "x_2": 9, "y_2": 9} for p in paths])
    run_stage("ingest", tmp_path, _data(root, layout="table", table="items.csv", dataset="shop"))
    m = pd.read_parquet(tmp_path / "data/02_intermediate/manifest.parquet")
    assert list(m.columns) == [*MANIFEST_COLUMNS, "category", "x_1", "y_1", "x_2", "y_2"]
    assert (m.x_2 == 9).all() and (m.category == "x").all()
    report = json.loads((tmp_path / "data/08_reporting/ingest.json").read_text())
    assert report["with_bbox"] == 8 and report["categories"] == 1


def test_a_bad_table_stops_ingest_naming_row_and_column_and_writes_nothing(tmp_path):
    from tests.data.layouts import make_folder, write_table

    root = tmp_path / "shop"
    paths = make_folder(root, classes=["a", "b"], per_class=2)
    write_table(root / "items.csv", [{"path": p, "label": 1, "split": "train"} for p in paths[:3]]
                + [{"path": paths[3], "label": 1, "split": "test"}])
    with pytest.raises(Exception) as e:
        run_stage("ingest", tmp_path, _data(root, layout="table", table="items.csv", dataset="shop"))
    assert "label(s) [1] appear in more than one split" in str(e.value) and "items.csv" in str(e.value)
    assert not (tmp_path / "data/02_intermediate/manifest.parquet").exists()


def test_a_table_row_whose_file_is_missing_stops_ingest_naming_the_row_and_the_file(tmp_path):
    from tests.data.layouts import make_folder, write_table

    root = tmp_path / "shop"
    paths = make_folder(root, classes=["a", "b", "c"], per_class=2)
    write_table(root / "items.csv", [{"path": p, "label": p.split("/")[0]} for p in paths]
                + [{"path": "a/gone.jpg", "label": "a"}])
    with pytest.raises(Exception) as e:
        run_stage("ingest", tmp_path, _data(root, layout="table", table="items.csv", dataset="shop"))
    message = str(e.value)
    assert "row 7: a/gone.jpg: file not found" in message and "data.bad_files: drop" in message
    assert f"listed by {root / 'items.csv'}" in message
    assert not (tmp_path / "data/02_intermediate/manifest.parquet").exists()

from __future__ import annotations

import pytest

from deepmetric.data.config import ParamsError
from tests.pipelines.kedro_helpers import load_params, run_stage


def test_glyphs_stage_writes_cub_layout_deterministically(tmp_path):
    params = load_params("glyphs")
    params["glyphs"]["num_classes"] = 10
    run_stage("glyphs", tmp_path / "a", params)
    run_stage("glyphs", tmp_path / "b", params)
    a, b = tmp_path / "a/data/01_raw/glyphs", tmp_path / "b/data/01_raw/glyphs"
    for name in ("images.txt", "image_class_labels.txt", "classes.txt", "glyphs.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert len((a / "classes.txt").read_text().splitlines()) == 10


def test_glyphs_bad_parameter_named(tmp_path):
    params = load_params("glyphs")
    params["glyphs"]["num_clases"] = 10
    with pytest.raises(Exception) as e:
        run_stage("glyphs", tmp_path, params)
    err = e.value
    while err.__cause__ is not None and not isinstance(err, ParamsError):
        err = err.__cause__
    assert "glyphs.num_clases: unknown parameter" in str(e.value) + str(err)
    assert not (tmp_path / "data/01_raw/glyphs").exists()

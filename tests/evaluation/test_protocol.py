import pandas as pd
import pytest

from deepmetric.evaluation.protocol import zero_shot_split


def _rows(split, role, n, label0=0):
    return [{"path": f"{split}{role}{i}.png", "label": label0 + i % 3, "class_name": "x", "split": split,
             "role": role} for i in range(n)]


def test_leave_one_out_for_cub_like_sets():
    m = pd.DataFrame(_rows("train", "both", 6) + _rows("test", "both", 6, 10))
    s = zero_shot_split(m, "cub")
    assert s.gallery is None and len(s.query) == 6 and s.ks == (1, 2, 4, 8)
    assert set(s.query["split"]) == {"test"}


def test_inshop_queries_against_gallery_only():
    m = pd.DataFrame(_rows("train", "both", 6) + _rows("test", "query", 4, 10) + _rows("test", "gallery", 5, 10))
    s = zero_shot_split(m, "inshop")
    assert set(s.query["role"]) == {"query"} and set(s.gallery["role"]) == {"gallery"}
    assert s.ks == (1, 10, 20, 30, 40, 50)


def test_missing_gallery_is_an_error():
    m = pd.DataFrame(_rows("test", "query", 4))
    with pytest.raises(ValueError, match="needs both query and gallery"):
        zero_shot_split(m, "inshop")


def test_no_test_rows_is_an_error():
    with pytest.raises(ValueError, match="no `test` rows"):
        zero_shot_split(pd.DataFrame(_rows("train", "both", 4)), "cub")

import numpy as np
import pandas as pd
import pytest

from deepmetric.data.images import ImageLimits, ImageTooLargeError
from deepmetric.data.transforms import InputSpec
from deepmetric.evaluation.protocol import GridConfig, retrieval_grid_png, zero_shot_split
from tests.data.layouts import make_boxed
from tests.deploy_fixtures import make_dataset
from tests.fixtures import STRICT_LIMITS, plant_image


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


@pytest.mark.parametrize("limit", sorted(STRICT_LIMITS))
def test_retrieval_grid_decodes_under_the_limits_it_is_given(tmp_path, limit):
    """The grid re-reads the images it shows: under the data parameters' limits, not the defaults."""
    strict, size, words = STRICT_LIMITS[limit]
    root = tmp_path / "dataset"
    manifest = make_dataset(root, num_classes=4, per_class=3, train_classes=2)
    split = zero_shot_split(manifest, "glyphs")
    grid = {"split": split, "query": np.eye(len(split.query), dtype=np.float32), "gallery": None}
    spec, cfg = InputSpec(resize=32, crop=32), GridConfig(queries=len(split.query), neighbours=2)
    victim = split.query["path"].iloc[2]
    plant_image(root / victim, size)
    assert retrieval_grid_png(grid, str(root), spec, cfg)[:4] == b"\x89PNG"  # the defaults accept it
    with pytest.raises(ImageTooLargeError) as e:
        retrieval_grid_png(grid, str(root), spec, cfg, ImageLimits(**strict))
    assert victim in str(e.value) and words in str(e.value)


def test_a_catalogue_is_searched_leave_one_out_or_against_its_gallery():
    m = pd.DataFrame(_rows("train", "both", 6) + _rows("test", "both", 6, 10))
    s = zero_shot_split(m, "my-products")
    assert s.gallery is None and s.ks == (1, 2, 4, 8)
    m = pd.DataFrame(_rows("test", "query", 4, 10) + _rows("test", "gallery", 5, 10))
    assert len(zero_shot_split(m, "my-products").gallery) == 5


def test_evaluation_embeds_and_shows_the_images_cut_to_their_boxes(tmp_path):
    import torch

    from deepmetric.evaluation.embed import pixel_embedder
    from deepmetric.evaluation.protocol import embed_split

    boxed, plain = make_boxed(tmp_path)
    spec = InputSpec(resize=16, crop=16)

    def embed(rows, root):
        split = zero_shot_split(rows, "my-products")
        return embed_split(pixel_embedder(8), split, str(root), spec, 8, torch.device("cpu"), False, "t")[0]

    np.testing.assert_array_equal(embed(boxed, tmp_path), embed(plain, tmp_path / "cropped"))
    split = zero_shot_split(boxed, "my-products")
    q = embed(boxed, tmp_path)
    grid = {"split": split, "query": q, "gallery": None}
    cfg = GridConfig(queries=2, neighbours=2)
    cropped = {"split": zero_shot_split(plain, "my-products"), "query": q, "gallery": None}
    assert retrieval_grid_png(grid, str(tmp_path), spec, cfg) == retrieval_grid_png(cropped, str(tmp_path / "cropped"),
                                                                                  spec, cfg)


def test_the_category_column_reaches_the_queries_and_the_gallery():
    """The manifest's optional ``category`` (a super-class) is carried row for row into the split that evaluation
    embeds and scores, so per-category figures can be computed from it."""
    def with_category(rows):
        return [{**r, "category": f"cat-{r['label'] % 2}"} for r in rows]

    m = pd.DataFrame(with_category(_rows("train", "both", 6) + _rows("test", "both", 6, 10)))
    s = zero_shot_split(m, "my-products")
    assert list(s.query["category"]) == [f"cat-{label % 2}" for label in s.query["label"]]
    m = pd.DataFrame(with_category(_rows("test", "query", 4, 10) + _rows("test", "gallery", 5, 11)))
    s = zero_shot_split(m, "my-products")
    for part in (s.query, s.gallery):
        assert list(part["category"]) == [f"cat-{label % 2}" for label in part["label"]]

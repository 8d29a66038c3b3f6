"""In-Shop Clothes (deepmetric.data.readers.inshop): query and gallery roles, a truncated listing named."""

from __future__ import annotations

import pytest

from deepmetric.data.readers import DatasetLayoutError, read_dataset
from tests.data.layouts import make_inshop, split_summary


def test_inshop_query_gallery_roles(tmp_path):
    root = make_inshop(tmp_path / "inshop", train_items=4, test_items=3)
    df = read_dataset("inshop", root)
    assert split_summary(df) == {"train": (8, 4), "val": (0, 0), "test": (9, 3)}
    test = df[df.split == "test"]
    assert (test.role == "query").sum() == 3 and (test.role == "gallery").sum() == 6
    assert (df.loc[df.split == "train", "role"] == "both").all()
    assert df.loc[df.class_name == "id_00000007", "label"].unique().tolist() == [7]


def test_inshop_truncated_listing_is_reported(tmp_path):
    root = make_inshop(tmp_path / "inshop")
    p = root / "Eval" / "list_eval_partition.txt"
    p.write_text("\n".join(p.read_text().splitlines()[:-2]) + "\n")
    with pytest.raises(DatasetLayoutError, match="declares 20 images but 18 are listed"):
        read_dataset("inshop", root)

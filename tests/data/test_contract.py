"""The data contract (deepmetric.data.contract): the manifest's columns are the readers' columns plus what ingest
adds, in the order the docs give; the dataset names are the readers' registry."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from deepmetric.data import readers
from deepmetric.data.contract import BBOX_COLUMNS, DATASETS, MANIFEST_COLUMNS, boxes_of, dataset_info
from deepmetric.data.readers import CATALOGUE_RECALL_KS

ROOT = Path(__file__).resolve().parents[2]


def test_the_manifest_is_the_readers_table_with_what_ingest_measures_before_the_dataset():
    *read, dataset = readers.READER_COLUMNS
    assert MANIFEST_COLUMNS == (*read, "width", "height", "sha256", dataset)


def test_the_documented_contract_lists_the_columns_in_order():
    for doc, pattern in (("README.md", r"the data contract: ([a-z0-9_, ]+)\)"),
                         ("docs/datasets.md", r"the data contract: `([a-z0-9_, ]+)`")):
        listed = re.search(pattern, (ROOT / doc).read_text()).group(1)
        assert tuple(c.strip() for c in listed.split(",")) == MANIFEST_COLUMNS, doc


def test_dataset_names_are_the_readers_registry():
    assert DATASETS is readers.DATASETS
    assert {"glyphs", "cub", "cars196", "sop", "inshop"} <= set(DATASETS.names())


def test_boxes_of_rows_with_and_without_a_box():
    rows = pd.DataFrame({"path": ["a", "b", "c"], "x_1": [1, np.nan, 0], "y_1": [2, np.nan, 0],
                         "x_2": [5, np.nan, 3.5], "y_2": [6, np.nan, 4]})
    assert boxes_of(rows) == [(1.0, 2.0, 5.0, 6.0), None, (0.0, 0.0, 3.5, 4.0)]
    assert boxes_of(rows.drop(columns="y_2")) is None  # no complete box columns: whole images
    assert boxes_of(rows.iloc[[1]]) is None  # no row with a box
    assert boxes_of(pd.DataFrame({"path": ["a"]})) is None
    assert BBOX_COLUMNS == ("x_1", "y_1", "x_2", "y_2")


def test_a_catalogue_name_gets_the_catalogue_protocol():
    assert dataset_info("cub").num_images == 11788
    info = dataset_info("my-shop")
    assert info.recall_ks == CATALOGUE_RECALL_KS and info.num_images is None and not info.separate_gallery

"""The data contract (deepmetric.data.contract): the manifest's columns are the readers' columns plus what ingest
adds, in the order the docs give; the dataset names are the readers' registry."""

from __future__ import annotations

import re
from pathlib import Path

from deepmetric.data import readers
from deepmetric.data.contract import DATASETS, MANIFEST_COLUMNS

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

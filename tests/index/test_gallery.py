"""`index.factory: auto` resolved by the index stage (deepmetric.index.gallery.resolve_index): the rule's index,
its tuned search parameter and build settings, explicit parameters winning; nothing is built for a large n."""

from __future__ import annotations

import pytest

from deepmetric.index.auto import AUTO, EVIDENCE, choose_factory
from deepmetric.index.config import IndexParams
from deepmetric.index.gallery import resolve_index

BUILT_IN = (1828, 128)
"""The built-in set's gallery (test split, role gallery/both) × the default embedding dimension."""


def test_auto_is_the_default_and_the_built_in_gallery_gets_exact_search():
    params = IndexParams()
    assert params.factory == AUTO
    chosen = resolve_index(params, *BUILT_IN)
    assert chosen["factory"] == "Flat" and chosen["search_params"] == {} and chosen["ef_construction"] is None
    assert chosen["auto"]["kind"] == "flat" and "below the smallest measured gallery" in chosen["auto"]["why"]


@pytest.mark.parametrize("n,dim", [(3 * 10 ** 6, 128), (20_000, 512), (10 ** 8, 768)])
def test_a_large_gallery_gets_the_rules_choice_with_its_knob(n, dim):
    choice = choose_factory(n, dim)
    chosen = resolve_index(IndexParams(), n, dim)
    assert chosen["factory"] == choice.factory
    assert chosen["search_params"] == choice.search
    assert chosen["ef_construction"] == choice.build.get("ef_construction")
    assert chosen["auto"] == {"kind": choice.kind, "search_params": choice.search, "train_size": choice.train_size,
                              "polysemous_training": choice.build.get("polysemous_training"), "why": choice.why}


def test_explicit_search_and_build_settings_win_over_the_rule():
    e = max(EVIDENCE, key=lambda e: e.n)
    knob = next(iter(e.search))
    chosen = resolve_index(IndexParams(search={knob: 3}, ef_construction=99), e.n, e.dim)
    assert chosen["search_params"] == {knob: 3} and chosen["ef_construction"] == 99
    assert chosen["auto"]["search_params"] == dict(e.search)


def test_a_factory_string_is_built_as_given():
    params = IndexParams(factory="HNSW8", search={"efSearch": 16})
    assert resolve_index(params, 10 ** 7, 512) == {"factory": "HNSW8", "search_params": {"efSearch": 16},
                                                   "ef_construction": None, "auto": None}


def test_an_empty_gallery_is_left_to_the_builder_to_refuse():
    assert resolve_index(IndexParams(), 0, 128)["factory"] == AUTO

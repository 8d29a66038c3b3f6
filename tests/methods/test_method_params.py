"""Each seed method's parameter block is validated by `parse_train` before any work starts."""

from __future__ import annotations

import pytest
import yaml

from deepmetric.methods import METHODS
from deepmetric.training.config import ParameterError, parse_train

SEEDS = METHODS.names(kind="seed")


def test_seed_methods_are_registered():
    assert set(SEEDS) == {"ranked_list", "intra_batch", "divide_conquer", "sharing"} and set(SEEDS) <= set(METHODS)


@pytest.mark.parametrize("method", SEEDS)
def test_wrong_key_in_a_method_block_fails_naming_it(method):
    with pytest.raises(ParameterError) as err:
        parse_train({"method": method, "methods": {method: {"temprature": 0.3}}})
    assert f"train.methods.{method}.temprature" in str(err.value)


@pytest.mark.parametrize(
    ("method", "block", "key"),
    [("ranked_list", {"alpha": -1.0}, "alpha"), ("intra_batch", {"label_smoothing": 1.5}, "label_smoothing"),
     ("divide_conquer", {"version": "cvpr"}, "version"), ("sharing", {"adv_weight": -5}, "adv_weight")],
)
def test_wrong_value_fails_naming_it(method, block, key):
    with pytest.raises(ParameterError, match=rf"train\.methods\.{method}\.{key}"):
        parse_train({"method": method, "methods": {method: block}})


def test_parameter_file_blocks_parse_and_set_backbone_options():
    with open("conf/base/parameters_train.yml") as fh:
        train = yaml.safe_load(fh)["train"]
    # the papers freeze BatchNorm of a pretrained trunk; a from-scratch trunk keeps it trainable
    pretrained = {**train, "backbone": {**train["backbone"], "name": "efficientnet_lite0", "pretrained": True}}
    scratch = {**train, "backbone": {**train["backbone"], "name": "resnet18", "pretrained": False}}
    expected = {"ranked_list": ("avg", False), "intra_batch": ("max", False), "divide_conquer": ("avg", "stats"),
                "sharing": ("avg", "stats")}
    for method, (pool, frozen) in expected.items():
        cfg, params = parse_train({**pretrained, "method": method})
        assert isinstance(params, METHODS[method].Params)
        assert (cfg.backbone.pool, cfg.backbone.frozen_bn) == (pool, frozen)
        cfg, _ = parse_train({**scratch, "method": method})
        assert (cfg.backbone.pool, cfg.backbone.frozen_bn) == (pool, False)
    # a user's explicit choice wins over the method's
    cfg, _ = parse_train({**pretrained, "method": "sharing", "backbone": {**pretrained["backbone"], "frozen_bn": False}})
    assert cfg.backbone.frozen_bn is False

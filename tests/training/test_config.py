"""The typed `train:` parameters (deepmetric.training.config): every bad parameter named, replaced parameters
pointing at what replaced them, a method's backbone options applied unless the user set them."""

from __future__ import annotations

import pytest

from deepmetric.training.config import ParameterError, parse_train


@pytest.mark.parametrize(
    "block, needle",
    [
        ({"method": "nope"}, "unknown train.method 'nope'"),
        ({"epochs": 0}, "train.epochs"),
        ({"optimizer": {"name": "adagrad"}}, "train.optimizer.name"),
        ({"bogus": 1}, "train.bogus: unknown parameter"),
        ({"methods": {"margin": {"margni": 0.1}}}, "train.methods.margin.margni"),
        ({"backbone": {"name": "resnet50", "pretrained": True}}, "needs weights_path"),
        ({"optimizer": {"group_lr": {"masks": -1}}}, "train.optimizer.group_lr"),
        ({"seed": 2**63}, "train.seed"),
    ],
)
def test_bad_parameters_are_named(block, needle):
    with pytest.raises(ParameterError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        parse_train(block)


def test_method_backbone_options_apply_unless_set():
    from deepmetric.methods import METHODS

    cfg, _ = parse_train({"method": "intra_batch"})
    assert cfg.backbone.pool == "max"  # the paper's max pooling
    cfg, _ = parse_train({"method": "intra_batch", "backbone": {"pool": "avg"}})
    assert cfg.backbone.pool == "avg"  # the user's explicit choice wins
    if METHODS["sharing"].backbone_options(METHODS["sharing"].Params()).get("frozen_bn"):
        # frozen BN is for pretrained trunks only: from scratch it stays trainable
        assert parse_train({"method": "sharing"})[0].backbone.frozen_bn is False


@pytest.mark.parametrize("old, new", [("amp", "train.precision"), ("cache_images", "train.cache.mode")])
def test_replaced_parameters_say_what_replaced_them(old, new):
    with pytest.raises(ParameterError, match=f"train.{old} was replaced by {new}"):
        parse_train({old: True})


@pytest.mark.parametrize("block, needle", [
    ({"distributed": {"nproc_per_node": 3}}, "must split evenly over 3 processes"),
    ({"distributed": {"nnodes": 2}}, "nnodes > 1 needs rdzv_endpoint"),
    ({"distributed": {"nnodes": 2, "rdzv_endpoint": "node0"}}, "is not host:port"),
    ({"distributed": {"nproc_per_node": 0}}, "train.distributed.nproc_per_node"),
    ({"distributed": {"gather": True}}, "train.distributed.gather: unknown parameter"),
])
def test_bad_distributed_parameters_are_named(block, needle):
    with pytest.raises(ParameterError, match=needle):
        parse_train(block)

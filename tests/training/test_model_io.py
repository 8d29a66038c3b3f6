"""The trained-model file (deepmetric.training.model_io): a payload rebuilds the same method without the parameter
files, anything else is refused, and the weights' fingerprint is one value wherever the weights come from."""

from __future__ import annotations

import pytest
import torch

from deepmetric.training.config import InputConfig, parse_train
from deepmetric.training.model_io import FORMAT, build_method, load_model, make_payload, weights_sha256

SPEC = InputConfig(resize=40, crop=32)


def _payload(**train):
    torch.manual_seed(0)
    cfg, params = parse_train({"method": "margin", "embedding_dim": 8, **train})
    method = build_method(cfg, params, num_classes=5)
    return method, make_payload(method, cfg, SPEC, 5, best_epoch=3)


def test_a_payload_rebuilds_the_same_method_in_eval_mode_with_its_input_spec():
    method, payload = _payload()
    assert payload["format"] == FORMAT and payload["num_classes"] == 5 and payload["best_epoch"] == 3
    assert payload["train"]["method"] == "margin" and payload["model"]["crop"] == 32
    rebuilt, spec = load_model(payload)
    assert spec == SPEC and not rebuilt.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.embed(x), method.eval().embed(x))


def test_pretrained_weights_come_from_the_payload_not_from_their_original_file(tmp_path):
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    method, payload = _payload(backbone={"name": "resnet18", "pretrained": True, "weights_path": str(weights)})
    recorded = payload["train"]["backbone"]["weights_sha256"]
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)  # another file at that path
    rebuilt, _ = load_model(payload)
    assert weights_sha256(rebuilt.state_dict()) == weights_sha256(method.state_dict())
    weights.unlink()  # a model file on another machine: the weights file is not there
    rebuilt, _ = load_model(payload)
    assert weights_sha256(rebuilt.state_dict()) == weights_sha256(method.state_dict())
    assert rebuilt.backbone.cfg.weights_sha256 == recorded  # the provenance the export and the bundle carry


@pytest.mark.parametrize("payload", [None, {"format": "deepmetric-model/0"}, {"state_dict": {}}])
def test_anything_but_a_model_payload_is_refused(payload):
    with pytest.raises(ValueError, match=r"not a deepmetric model file \(expected format 'deepmetric-model/1'\)"):
        load_model(payload)


def test_the_weights_fingerprint_follows_names_values_and_dtypes():
    method, payload = _payload()
    fp = weights_sha256(payload["state_dict"])
    assert fp == weights_sha256(method.state_dict()) == weights_sha256(load_model(payload)[0].state_dict())
    changed = dict(payload["state_dict"])
    name = next(k for k, v in changed.items() if v.is_floating_point() and v.numel())
    changed[name] = changed[name].clone()
    changed[name].view(-1)[0] += 1
    assert weights_sha256(changed) != fp
    renamed = {("x." + k if k == name else k): v for k, v in payload["state_dict"].items()}
    assert weights_sha256(renamed) != fp
    assert weights_sha256({"w": torch.zeros(2)}) != weights_sha256({"w": torch.zeros(2, dtype=torch.float64)})
    assert weights_sha256({"w": torch.zeros(2)}) == weights_sha256({"w": [0.0, 0.0]})

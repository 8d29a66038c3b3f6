"""Build a method from parameters, and the trained-model file (`data/06_models/model.pt`) format.

The file is a dict: ``format``, ``train`` (the validated train block), ``model`` (the input spec),
``num_classes``, ``state_dict``, ``best_epoch``, ``val`` (validation metrics of the best epoch). Everything
needed to rebuild the method without the parameter files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from deepmetric.methods import METHODS, Method, MethodParams
from deepmetric.models.backbones import build_backbone
from deepmetric.training.config import InputConfig, TrainConfig, parse, parse_train

FORMAT = "deepmetric-model/1"


def build_method(cfg: TrainConfig, params: MethodParams, num_classes: int) -> Method:
    backbone = build_backbone(cfg.backbone)
    return METHODS[cfg.method](params, backbone, cfg.embedding_dim, num_classes)


def make_payload(
    method: Method, cfg: TrainConfig, input_cfg: InputConfig, num_classes: int, **extra: Any
) -> dict[str, Any]:
    """The model file's dict. Everything but the weights passes through one JSON round trip: pickle (inside
    ``torch.save``) writes a string once per *object*, so the same values held by other objects (the log of a run
    against the log of a resumed one, read back from its checkpoint) would give other bytes; after the round trip
    equal payloads give equal files, byte for byte (the file is a DVC output: a function of its inputs)."""
    fields = json.loads(json.dumps({"train": cfg.model_dump(mode="json"), "model": input_cfg.model_dump(mode="json"),
                                    "num_classes": num_classes, **extra}, default=_plain))
    return {
        "format": FORMAT,
        "train": fields.pop("train"),
        "model": fields.pop("model"),
        "num_classes": fields.pop("num_classes"),
        "state_dict": {k: v.detach().cpu() for k, v in method.state_dict().items()},
        **fields,
    }


def _plain(value: Any) -> Any:
    """numpy scalars (validation metrics) as Python numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def load_model(payload: dict[str, Any]) -> tuple[Method, InputConfig]:
    """Rebuild the trained method (eval mode, CPU) and its input spec from a model file's payload."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"not a deepmetric model file (expected format {FORMAT!r})")
    # Pretrained weights are in the state dict: never re-read their original file, nor look for it before parsing
    # (it need not exist, or be the same file, where the model is loaded); the recorded weights_sha256 stays.
    train = dict(payload["train"])
    train["backbone"] = {**(train.get("backbone") or {}), "pretrained": False, "weights_path": None}
    cfg, params = parse_train(train)
    method = build_method(cfg, params, payload["num_classes"])
    method.load_state_dict(payload["state_dict"])
    method.eval()
    return method, parse(InputConfig, payload["model"], "model")


def weights_sha256(state_dict: Mapping[str, Any]) -> str:
    """Fingerprint of a model's weights: sha256 over every tensor's name, dtype, shape and bytes, in key order.

    The same weights give the same value whether they come from ``model.pt``'s payload or from the method
    rebuilt from it (``method.state_dict()``), so the `evaluate` stage (metrics.json) and the `export` stage
    (ONNX metadata ``deepmetric.weights_sha256``) record one value, and the `bundle` stage can check that the
    metrics it ships are those of the model it ships.
    """
    import hashlib

    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t)
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        flat = t.detach().cpu().contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()

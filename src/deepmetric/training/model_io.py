"""Build a method from parameters, and the trained-model file (`data/06_models/model.pt`) format.

The file is a dict: ``format``, ``train`` (the validated train block), ``model`` (the input spec),
``num_classes``, ``state_dict``, ``best_epoch``, ``val`` (validation metrics of the best epoch). Everything
needed to rebuild the method without the parameter files.
"""

from __future__ import annotations

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
    return {
        "format": FORMAT,
        "train": cfg.model_dump(mode="json"),
        "model": input_cfg.model_dump(mode="json"),
        "num_classes": num_classes,
        "state_dict": {k: v.detach().cpu() for k, v in method.state_dict().items()},
        **extra,
    }


def load_model(payload: dict[str, Any]) -> tuple[Method, InputConfig]:
    """Rebuild the trained method (eval mode, CPU) and its input spec from a model file's payload."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"not a deepmetric model file (expected format {FORMAT!r})")
    cfg, params = parse_train(payload["train"])
    # Pretrained weights are in the state dict; never re-read them from their original file.
    cfg = cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update={"pretrained": False, "weights_path": None})})
    method = build_method(cfg, params, payload["num_classes"])
    method.load_state_dict(payload["state_dict"])
    method.eval()
    return method, parse(InputConfig, payload["model"], "model")

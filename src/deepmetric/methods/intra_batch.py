"""Learning Intra-Batch Connections (Seidenschwarz, Elezi, Leal-Taixé, ICML 2021) — `train.method: intra_batch`.

Max-pooled backbone → linear → f (`embedding_dim`, un-normalised). A linear classifier on f gives the backbone
logits. During training the whole batch is a fully connected graph (self-loops included) whose nodes are the
L2-normalised f; a message-passing network (MPN) of transformer layers (multi-head dot-product attention →
dropout → residual → LayerNorm → FFN → dropout → residual → LayerNorm) refines every node from all the others,
and a BatchNorm-neck classifier gives the MPN logits. Loss = CE_ls(z_backbone / τ) + CE_ls(z_mpn / τ) with label
smoothing 0.1. The MPN is training-only: the test and ONNX embedding is normalise(f), without batch context.
See `docs/methods/intra_batch.md`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from deepmetric.methods.base import BatchConfig, Method, MethodParams, class_balanced_batches, register


class IntraBatchParams(MethodParams):
    # Defaults: the CUB config of the authors' code (dvl-tum/intra_batch): τ 0.2, 1 MPN layer, 2 heads.
    temperature: float = Field(0.2, gt=0, le=10, description="τ dividing both heads' logits")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="ε of the label-smoothed cross-entropy")
    mpn_layers: int = Field(1, ge=1, le=8)
    mpn_heads: int = Field(2, ge=1)
    mpn_ffn_dim: int = Field(2048, gt=0, description="FFN hidden width (paper: 4 × 512)")
    dropout: float = Field(0.1, ge=0, lt=1, description="on attention weights, after attention and in the FFN")
    mpn_cat: bool = Field(False, description="classify the concatenation of all MPN layers' outputs (`cat: 1`)")
    backbone_loss_weight: float = Field(1.0, ge=0)
    mpn_loss_weight: float = Field(1.0, ge=0)
    # The authors' NumberSampler (their CUB config): a new factorisation N × P of the batch size every epoch.
    number_sampler: bool = Field(False, description="draw a new classes × samples factorisation each epoch")
    number_sampler_min: int = Field(2, ge=1, description="smallest N and P the NumberSampler may draw")


class _Attention(nn.Module):
    """Multi-head dot-product attention over all nodes (the fully connected graph with self-loops)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"intra_batch: embedding_dim {dim} is not divisible by mpn_heads {heads}")
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)  # 1/√(D/H)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        for lin in (self.q, self.k, self.v, self.o):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        h, dh = self.heads, d // self.heads
        q = self.q(x).view(n, h, dh).transpose(0, 1)  # [h, n, dh]
        k = self.k(x).view(n, h, dh).transpose(0, 1)
        v = self.v(x).view(n, h, dh).transpose(0, 1)
        # scores[h, i, j]: message from node j to node i; softmax over i's incoming edges (every j, itself too)
        attn = torch.softmax((q @ k.transpose(1, 2)) * self.scale, dim=-1)
        out = self.drop(attn) @ v  # sum aggregation of the weighted messages
        return self.o(out.transpose(0, 1).reshape(n, d))


class _MPNLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.attention = _Attention(dim, heads, dropout)
        self.drop1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.drop2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop1(self.attention(x)))
        return self.norm2(x + self.drop2(self.ffn(x)))


class MessagePassingNetwork(nn.Module):
    def __init__(self, dim: int, layers: int, heads: int, ffn_dim: int, dropout: float, cat: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, dim)  # `red` = 1
        self.layers = nn.ModuleList(_MPNLayer(dim, heads, ffn_dim, dropout) for _ in range(layers))
        self.cat = cat

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        x = self.inp(nodes)
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return torch.cat(outs, dim=-1) if self.cat else x


def smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, temperature: float, eps: float) -> torch.Tensor:
    """Label-smoothed cross-entropy of `logits / τ` (target (1−ε)·onehot + ε/C; per-sample sum, batch mean)."""
    return F.cross_entropy(logits / temperature, labels, label_smoothing=eps)


def number_sampler_factorisations(batch_size: int, num_classes: int, minimum: int = 2) -> list[tuple[int, int]]:
    """Every (classes N, samples P) with N·P = batch_size, N, P ≥ minimum and N ≤ num_classes."""
    return [
        (n, batch_size // n)
        for n in range(minimum, batch_size // minimum + 1)
        if batch_size % n == 0 and batch_size // n >= minimum and n <= num_classes
    ]


class _BackboneEmbedder(nn.Module):
    """The export graph: backbone → linear → L2 normalisation. Holds no MPN (no attention) at all."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone(x)), dim=-1)


@register(
    "intra_batch",
    kind="seed",
    paper="Seidenschwarz, Elezi, Leal-Taixé: Learning Intra-Batch Connections for Deep Metric Learning (ICML 2021)",
    doc="docs/methods/intra_batch.md",
)
class IntraBatchMethod(Method):
    Params = IntraBatchParams

    def __init__(self, params: IntraBatchParams, backbone, embedding_dim: int, num_classes: int) -> None:
        super().__init__(params, backbone, embedding_dim, num_classes)
        self.classifier = nn.Linear(self.embedding_dim, num_classes)  # on the un-normalised f
        self.mpn = MessagePassingNetwork(
            self.embedding_dim, params.mpn_layers, params.mpn_heads, params.mpn_ffn_dim, params.dropout, params.mpn_cat
        )
        mpn_out = self.embedding_dim * (params.mpn_layers if params.mpn_cat else 1)
        self.mpn_neck = nn.BatchNorm1d(mpn_out)
        self.mpn_neck.bias.requires_grad_(False)  # BN neck with frozen bias (BNNeck)
        self.mpn_classifier = nn.Linear(mpn_out, num_classes, bias=False)

    @classmethod
    def backbone_options(cls, params: MethodParams) -> dict[str, Any]:
        # Global max pooling and trainable BatchNorm, as the authors' code (docs/methods/intra_batch.md).
        return {"pool": "max", "frozen_bn": False}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        # One lr for backbone and MPN, as the authors' RAdam group.
        extra = [p for m in (self.classifier, self.mpn, self.mpn_neck, self.mpn_classifier) for p in m.parameters()
                 if p.requires_grad]
        groups = super().param_groups(lr, weight_decay)
        groups.append({"name": "mpn", "params": extra, "lr": lr, "weight_decay": weight_decay})
        return groups

    def batch_sampler(self, labels: np.ndarray, batch: BatchConfig, seed: int, num_batches: int) -> Iterator[list[int]]:
        if not self.params.number_sampler:
            return class_balanced_batches(labels, batch, seed, num_batches)
        choices = number_sampler_factorisations(batch.size, len(np.unique(labels)), self.params.number_sampler_min)
        if not choices:
            raise ValueError(f"intra_batch.number_sampler: batch size {batch.size} has no N × P factorisation")
        n, p = choices[np.random.default_rng(seed).integers(len(choices))]
        return class_balanced_batches(labels, BatchConfig(classes_per_batch=n, samples_per_class=p), seed, num_batches)

    def mpn_logits(self, f: torch.Tensor) -> torch.Tensor:
        """Logits of the MPN head: every node attends to the whole batch (training-time only)."""
        return self.mpn_classifier(self.mpn_neck(self.mpn(F.normalize(f, dim=-1))))

    def training_losses(self, f: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.params
        ce_backbone = smoothed_ce(self.classifier(f), labels, p.temperature, p.label_smoothing)
        ce_mpn = smoothed_ce(self.mpn_logits(f), labels, p.temperature, p.label_smoothing)
        total = p.backbone_loss_weight * ce_backbone + p.mpn_loss_weight * ce_mpn
        return {"loss": total, "ce_backbone": ce_backbone, "ce_mpn": ce_mpn}

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.training_losses(embeddings, labels)["loss"]

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, ctx) -> dict[str, float]:
        f, labels = ctx.gather(self(images), labels)  # the MPN attends over the whole global batch
        losses = self.training_losses(f, labels)
        ctx.optimizer_step(losses["loss"])
        return {k: float(v.detach()) for k, v in losses.items()}

    def export_module(self) -> nn.Module:
        return _BackboneEmbedder(self.backbone, self.head)

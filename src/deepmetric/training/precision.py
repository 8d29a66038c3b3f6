"""Numeric precision and speed knobs of training, in one object the loop asks: ``train.precision``
(fp32 | bf16 | fp16), ``train.channels_last`` and ``train.compile``.

Where autocast applies: the **backbone's forward** (convolutions are >95 % of the FLOPs). Its output is cast
back to float32, so embedding heads, message passing, proxies and every loss run in float32 — distances
between unit vectors need more than bf16's 8 mantissa bits, and the backward pass and the optimizer step
run outside autocast, as PyTorch's AMP recipe asks. fp16 needs CUDA and uses a gradient scaler; bf16 needs
no scaler and runs on CUDA and on CPUs (natively with AVX-512 BF16 / AMX, emulated — slower — elsewhere).
``channels_last`` converts the backbone's weights and inputs to NHWC (faster convolutions with cuDNN and
oneDNN); ``compile`` applies ``torch.compile`` to the backbone (in place: the state dict keys stay the same).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

log = logging.getLogger(__name__)

PrecisionName = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX on this CPU (bf16 autocast is emulated, and slower than fp32, without them)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class Precision:
    """What the loop and the backbone need to know about precision, memory format and compilation."""

    device: torch.device
    name: PrecisionName = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.name not in _DTYPES:
            raise ValueError(f"train.precision {self.name!r}: choose fp32, bf16 or fp16")
        if self.name == "fp16" and self.device.type != "cuda":
            raise ValueError("train.precision=fp16 needs a CUDA device (it relies on a gradient scaler and fp16 "
                             "kernels); use bf16 on the CPU")
        if self.name == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("train.precision=bf16: this GPU has no bf16 support; use fp16")
        if self.name == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
            log.warning("train.precision=bf16 on a CPU without AVX-512 BF16/AMX: bf16 is emulated and slower than fp32")
        self.scaler = torch.amp.GradScaler("cuda") if self.name == "fp16" else None

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name]

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def prepare(self, method: torch.nn.Module) -> None:
        """Attach to the method's backbone (autocast + memory format inside its forward) and compile it."""
        backbone = method.backbone
        backbone.runtime = self
        if self.channels_last:
            backbone.to(memory_format=torch.channels_last)
        if self.compile:
            backbone.compile()

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, sync=None) -> None:
        """zero_grad → backward (scaled for fp16) → step; always outside autocast. ``sync`` (a
        `deepmetric.training.distributed.GradientSync`, several processes) averages the gradients over the
        ranks during and after backward, before the step."""
        optimizer.zero_grad(set_to_none=True)
        with sync if sync is not None else contextlib.nullcontext():
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)

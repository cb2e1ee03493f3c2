"""The fine-tune and evaluate loops, shared by clients, baselines and tests."""

from __future__ import annotations

import logging
import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from atm_fl.models.base import Batch, inputs_of, iterate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneSettings:
    """Local fine-tuning hyper-parameters (run-config keys of the same names)."""

    epochs: float
    batch_size: int
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0
    device: str = "cpu"
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16"; mixed precision applies on CUDA only

    @classmethod
    def from_config(cls, cfg) -> "FinetuneSettings":
        return cls(epochs=cfg.local_epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer, lr=cfg.lr,
                   weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, device=resolve_device(cfg.device),
                   precision=getattr(cfg, "precision", "fp32"))


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run-config key 'device' = 'cuda' but no CUDA device is visible; use device='auto' or 'cpu'.")
    return name


_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: str, precision: str):
    """Autocast context for ``precision`` on CUDA; a no-op for fp32 and on the CPU.

    Weights, optimiser state and task vectors stay float32 either way: only the
    forward/backward arithmetic runs in bf16/fp16.
    """
    if precision == "fp32" or not str(device).startswith("cuda"):
        return contextlib.nullcontext()
    if precision not in _AMP_DTYPES:
        raise ValueError(f"run-config key 'precision' = {precision!r}; choose one of: fp32, bf16, fp16.")
    return torch.autocast(device_type="cuda", dtype=_AMP_DTYPES[precision])


def example_stream(n: int, start: int, count: int, seed: int) -> torch.Tensor:
    """Indices of examples ``start .. start+count`` of an endless stream of seeded epochs.

    Epoch ``e`` is ``permutation(n)`` seeded by ``(seed, e)``. A budget split over
    rounds therefore walks through the data as one run would: round ``r`` of
    ``E`` epochs takes positions ``[(r-1)*E*n, r*E*n)``.
    """
    out = []
    pos, end = start, start + count
    while pos < end:
        epoch, offset = divmod(pos, n)
        perm = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))
        take = min(n - offset, end - pos)
        out.append(perm[offset:offset + take])
        pos += take
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def make_optimizer(params, s: FinetuneSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)


def finetune(backbone: nn.Module, head: nn.Module, data: Batch, s: FinetuneSettings, *,
             round_index: int = 1, seed: int = 0, progress_label: str = "") -> dict[str, float]:
    """Fine-tune ``backbone`` in place for ``s.epochs`` epochs of ``data`` with the head frozen.

    Round ``round_index`` (1-based) continues the example stream where the previous
    round stopped, so fractional epochs cover the data once per ``1/epochs`` rounds.
    Returns metrics: ``loss`` (mean over steps), ``num-examples``, ``steps``, ``seconds``.
    """
    t0 = time.perf_counter()
    n = len(data["labels"])
    if n == 0:
        raise ValueError(f"{progress_label or 'task'}: no training examples")
    per_round = max(1, int(round(s.epochs * n)))
    order = example_stream(n, (round_index - 1) * per_round, per_round, seed)
    params = [p for p in backbone.parameters() if p.requires_grad]
    opt = make_optimizer(params, s)
    backbone.to(s.device).train()
    head.to(s.device).eval()
    # fp16 needs loss scaling (its exponent range is too small for small gradients); bf16 does not.
    scaler = torch.amp.GradScaler("cuda") if s.precision == "fp16" and str(s.device).startswith("cuda") else None
    losses = []
    steps = math.ceil(per_round / s.batch_size)
    log_every = max(1, steps // 4)
    for step, batch in enumerate(iterate(data, s.batch_size, order), start=1):
        batch = {k: v.to(s.device, non_blocking=True) for k, v in batch.items()}
        opt.zero_grad(set_to_none=True)
        with autocast(s.device, s.precision):
            logits = head(backbone(**inputs_of(batch)))
        loss = nn.functional.cross_entropy(logits.float(), batch["labels"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{progress_label}: loss became {float(loss)} at step {step}; lower 'lr'")
        if scaler is not None:
            scaler.scale(loss).backward()
            if s.max_grad_norm > 0:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(params, s.max_grad_norm)
            scaler.step(opt)  # skips the step when the scaled gradients overflowed
            scaler.update()
        else:
            loss.backward()
            if s.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(params, s.max_grad_norm)
            opt.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            log.info("%s step %d/%d loss %.4f", progress_label, step, steps, losses[-1])
    backbone.eval()
    return {"loss": float(np.mean(losses)), "num-examples": float(per_round), "steps": float(len(losses)),
            "seconds": time.perf_counter() - t0}


@torch.no_grad()
def predict(backbone: nn.Module, head: nn.Module, data: Batch, batch_size: int, device: str = "cpu",
            precision: str = "fp32"):
    """(predictions, mean loss) over ``data``; ``precision`` as in :func:`autocast`."""
    backbone.to(device).eval()
    head.to(device).eval()
    preds, loss_sum = [], 0.0
    for batch in iterate(data, batch_size):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(device, precision):
            logits = head(backbone(**inputs_of(batch)))
        logits = logits.float()
        loss_sum += float(nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
        preds.append(logits.argmax(1).cpu())
    n = len(data["labels"])
    return (torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)), loss_sum / max(n, 1)


def classification_metrics(preds: torch.Tensor, labels: torch.Tensor, names=("accuracy",)) -> dict[str, float]:
    """accuracy, and on request ``mcc`` (Matthews) and ``f1`` (binary, positive class 1)."""
    preds, labels = preds.numpy(), labels.numpy()
    out = {"accuracy": float((preds == labels).mean()) if len(labels) else float("nan")}
    if "mcc" in names:
        from sklearn.metrics import matthews_corrcoef

        out["mcc"] = float(matthews_corrcoef(labels, preds))
    if "f1" in names:
        from sklearn.metrics import f1_score

        out["f1"] = float(f1_score(labels, preds, zero_division=0))
    return out


def evaluate(backbone: nn.Module, head: nn.Module, data: Batch, batch_size: int, device: str = "cpu",
             metric_names=("accuracy",), precision: str = "fp32") -> dict[str, float]:
    preds, loss = predict(backbone, head, data, batch_size, device, precision)
    metrics = classification_metrics(preds, data["labels"], metric_names)
    metrics.update({"loss": loss, "num-examples": float(len(data["labels"]))})
    return metrics

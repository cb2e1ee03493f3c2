"""The fine-tune and evaluate loops, shared by clients, baselines and tests."""

from __future__ import annotations

import logging
import contextlib
import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from atm_fl.data import as_split
from atm_fl.models.base import inputs_of

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
    warmup_steps: int = 0  # linear lr warm-up over this many steps (0: none)
    warmup_scope: str = "run"  # "run": the client's first steps over all rounds; "round": every round's first steps
    moment_warmup: int = 0  # batches seen at lr 0 by a fresh optimiser before its first update

    @classmethod
    def from_config(cls, cfg) -> "FinetuneSettings":
        return cls(epochs=cfg.local_epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer, lr=cfg.lr,
                   weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, device=resolve_device(cfg.device),
                   precision=getattr(cfg, "precision", "fp32"), warmup_steps=cfg.client_lr_warmup,
                   warmup_scope=cfg.client_lr_warmup_scope,
                   moment_warmup=getattr(cfg, "client_moment_warmup", 0))

    def lr_at(self, round_index: int, step: int, steps_per_round: int) -> float:
        """The lr of ``step`` (1-based) of round ``round_index``: ``lr`` after a linear warm-up."""
        if self.warmup_steps <= 0:
            return self.lr
        done = step if self.warmup_scope == "round" else (round_index - 1) * steps_per_round + step
        return self.lr * min(1.0, done / self.warmup_steps)


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


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """An optimiser's per-parameter state (Adam moments and step counts, SGD momentum) as flat named tensors."""
    return {f"{i}.{name}": (v if torch.is_tensor(v) else torch.tensor(float(v))).detach().cpu().clone()
            for i, st in opt.state_dict()["state"].items() for name, v in st.items()}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], params) -> bool:
    """Load state saved by :func:`optimizer_tensors`; False (and nothing loaded) when it does not fit ``params``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or int(index) >= len(params):
            return False
        if value.dim() and tuple(value.shape) != tuple(params[int(index)].shape):
            return False
        state.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    return True


def finetune(backbone: nn.Module, head: nn.Module, data, s: FinetuneSettings, *,
             round_index: int = 1, seed: int = 0, progress_label: str = "",
             optimizer_state: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Fine-tune ``backbone`` in place for ``s.epochs`` epochs of ``data`` with the head frozen.

    ``data`` is a split (``atm_fl.data``: in memory or streamed) or a plain ``Batch``.
    Round ``round_index`` (1-based) continues the example stream where the previous
    round stopped, so fractional epochs cover the data once per ``1/epochs`` rounds.
    ``optimizer_state`` (run-config ``client-optimizer-state = carry``): the optimiser
    starts from it when it fits (empty: fresh) and it is replaced by the state at the end,
    so Adam's moments carry over from round to round instead of restarting.
    Returns metrics: ``loss`` (mean over steps), ``num-examples``, ``steps``, ``seconds``, ``lr``.
    """
    t0 = time.perf_counter()
    data = as_split(data)
    n = data.num_examples
    if n == 0:
        raise ValueError(f"{progress_label or 'task'}: no training examples")
    per_round = max(1, int(round(s.epochs * n)))
    order = example_stream(n, (round_index - 1) * per_round, per_round, seed)
    params = [p for p in backbone.parameters() if p.requires_grad]
    opt = make_optimizer(params, s)
    fresh = not optimizer_state
    if optimizer_state and not load_optimizer_tensors(opt, optimizer_state, params):
        log.warning("%s: the carried optimiser state does not fit this model; starting a fresh optimiser",
                    progress_label)
        fresh = True
    backbone.to(s.device).train()
    head.to(s.device).eval()
    if fresh and s.moment_warmup > 0:
        # Its own seeded draw over the whole split: a round may hold fewer batches than the warm-up.
        _gather_moments(backbone, head, data, example_stream(n, 0, s.moment_warmup * s.batch_size, seed + 7919),
                        opt, s)
    # fp16 needs loss scaling (its exponent range is too small for small gradients); bf16 does not.
    scaler = torch.amp.GradScaler("cuda") if s.precision == "fp16" and str(s.device).startswith("cuda") else None
    losses = []
    steps = math.ceil(per_round / s.batch_size)
    log_every = max(1, steps // 4)
    for step, batch in enumerate(data.batches(s.batch_size, order), start=1):
        batch = {k: v.to(s.device, non_blocking=True) for k, v in batch.items()}
        opt.zero_grad(set_to_none=True)
        lr = s.lr_at(round_index, step, steps)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = _batch_loss(backbone, head, batch, s)
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
    if optimizer_state is not None:
        optimizer_state.clear()
        optimizer_state.update(optimizer_tensors(opt))
    return {"loss": float(np.mean(losses)), "num-examples": float(per_round), "steps": float(len(losses)),
            "seconds": time.perf_counter() - t0, "lr": float(lr)}


def _batch_loss(backbone: nn.Module, head: nn.Module, batch, s: FinetuneSettings) -> torch.Tensor:
    """Cross-entropy of one batch through the backbone and the frozen head (the fine-tuning loss)."""
    with autocast(s.device, s.precision):
        logits = head(backbone(**inputs_of(batch)))
    return nn.functional.cross_entropy(logits.float(), batch["labels"])


def _gather_moments(backbone: nn.Module, head: nn.Module, data, order, opt, s: FinetuneSettings) -> None:
    """Run ``s.moment_warmup`` batches of ``order`` through ``opt`` at lr 0 (run-config
    ``client-moment-warmup``): the moments are estimated from several batches before any weight
    moves, so the first real update is not the sign-like step of a one-batch estimate."""
    for batch in itertools.islice(data.batches(s.batch_size, order), s.moment_warmup):
        batch = {k: v.to(s.device, non_blocking=True) for k, v in batch.items()}
        opt.zero_grad(set_to_none=True)
        for group in opt.param_groups:
            group["lr"] = 0.0  # AdamW at lr 0: moments and step count advance, weights (and decay) do not
        loss = _batch_loss(backbone, head, batch, s)
        if torch.isfinite(loss):
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)


@torch.no_grad()
def predict(backbone: nn.Module, head: nn.Module, data, batch_size: int, device: str = "cpu",
            precision: str = "fp32"):
    """(predictions, mean loss) over ``data`` (a split or a ``Batch``); ``precision`` as in :func:`autocast`."""
    data = as_split(data)
    backbone.to(device).eval()
    head.to(device).eval()
    preds, loss_sum = [], 0.0
    for batch in data.batches(batch_size):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(device, precision):
            logits = head(backbone(**inputs_of(batch)))
        logits = logits.float()
        loss_sum += float(nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
        preds.append(logits.argmax(1).cpu())
    n = data.num_examples
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


def evaluate(backbone: nn.Module, head: nn.Module, data, batch_size: int, device: str = "cpu",
             metric_names=("accuracy",), precision: str = "fp32") -> dict[str, float]:
    """Metrics of ``head(backbone(x))`` over ``data`` (a split or a ``Batch``), batch by batch."""
    data = as_split(data)
    preds, loss = predict(backbone, head, data, batch_size, device, precision)
    metrics = classification_metrics(preds, data.labels, metric_names)
    metrics.update({"loss": loss, "num-examples": float(data.num_examples)})
    return metrics

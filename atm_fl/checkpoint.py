"""Per-round checkpoints of a run, and resuming from the last complete round.

At the end of every round (merged, and evaluated unless that evaluation rides with the
next round's train messages, run-config ``evaluate-in-train``) the server writes, under
``<run dir>/checkpoint/``:

* ``round-NNNN.safetensors``: the base after round NNNN (the full backbone state dict);
* ``server-NNNN.safetensors``: the server update rule's state after round NNNN (e.g.
  momentum or Adam moments; absent for ``server-optimizer = none``), with its step count
  in ``state.json``;
* ``state.json``: the round number, the model file and its SHA-256, the run-config,
  the per-round records of rounds 0..NNNN (so a resumed ``results.json`` keeps them),
  and the server process's RNG states (Python ``random``, NumPy, torch).

Write order makes a crash at any moment harmless: the model file is written under a
temporary name and renamed, then ``state.json`` is replaced the same way, and only
then is the previous round's model file removed. ``state.json`` therefore always
names a complete model file; a half-written round is ignored.

Nothing else needs saving for an exact resume: clients are stateless between rounds
(a fresh optimiser every round, the example stream and dropout seeded from
(seed, task, global round), the head rebuilt from the pretrained backbone), and the
merge plugins seed their randomness from (seed, round, task).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from atm_fl.config import ConfigError, RunConfig

log = logging.getLogger(__name__)

DIRNAME = "checkpoint"
STATE_FILE = "state.json"
FORMAT = 1

# Run-config keys that may differ between the stopped run and its resumption: they do
# not change what the rounds compute. Every other key must be equal.
MAY_CHANGE_ON_RESUME = frozenset({
    "resume", "num-server-rounds", "round-timeout", "discovery-timeout", "output-dir", "run-name",
    "save-model", "device",
})


@dataclass
class Checkpoint:
    run_dir: Path
    round: int
    state: dict[str, torch.Tensor]
    config: dict[str, Any]
    rounds: list[dict[str, Any]]
    rng: dict[str, Any]
    extra: dict[str, Any]
    server_state: dict[str, torch.Tensor] = field(default_factory=dict)
    server_steps: int = 0


# --------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """The process's Python, NumPy and torch (CPU) RNG states, JSON-serialisable."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, base64.b64encode(np.asarray(keys, dtype=np.uint32).tobytes()).decode(), int(pos),
                  int(has_gauss), float(cached)],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.frombuffer(base64.b64decode(keys), dtype=np.uint32).copy(), pos, has_gauss, cached))
    torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()))


# --------------------------------------------------------------------------- save / load
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _replace_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, server_round: int, state: Mapping[str, torch.Tensor], *,
                    config: Mapping[str, Any], rounds: list[dict[str, Any]],
                    extra: Mapping[str, Any] | None = None,
                    server_state: Mapping[str, torch.Tensor] | None = None, server_steps: int = 0) -> Path:
    """Checkpoint the base (and the server update rule's state) after ``server_round``; returns the model file."""
    from safetensors.torch import save_file

    ckdir = Path(run_dir) / DIRNAME
    ckdir.mkdir(parents=True, exist_ok=True)
    model = ckdir / f"round-{server_round:04d}.safetensors"
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    _replace_atomically(model, lambda p: save_file(tensors, str(p), metadata={"round": str(server_round)}))
    payload = {"format": FORMAT, "round": server_round, "model_file": model.name, "sha256": _sha256(model),
               "saved_at": time.time(), "config": dict(config), "rounds": rounds, "rng": rng_state(),
               "extra": dict(extra or {}), "server_steps": int(server_steps)}
    if server_state:
        opt = ckdir / f"server-{server_round:04d}.safetensors"
        buffers = {k: v.detach().contiguous().cpu() for k, v in server_state.items()}
        _replace_atomically(opt, lambda p: save_file(buffers, str(p), metadata={"round": str(server_round)}))
        payload.update(server_file=opt.name, server_sha256=_sha256(opt))
    _replace_atomically(ckdir / STATE_FILE, lambda p: p.write_text(json.dumps(payload, indent=1, default=float)))
    keep = {model.name, payload.get("server_file")}
    for old in [*ckdir.glob("round-*.safetensors"), *ckdir.glob("server-*.safetensors")]:
        if old.name not in keep:
            old.unlink(missing_ok=True)
    return model


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / DIRNAME / STATE_FILE).is_file()


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read the last complete round's checkpoint of ``run_dir``.

    Raises ``ConfigError`` when there is none or its model file is missing or corrupt.
    """
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    ckdir = run_dir / DIRNAME
    try:
        meta = json.loads((ckdir / STATE_FILE).read_text())
    except FileNotFoundError:
        raise ConfigError(f"run-config key 'resume': {str(run_dir)!r} has no checkpoint ({DIRNAME}/{STATE_FILE}); "
                          "point it at the directory of a run that completed at least one round, or use "
                          "resume='auto'.") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(f"checkpoint {ckdir / STATE_FILE} has format {meta.get('format')!r}; this version reads "
                          f"format {FORMAT}.")
    model = ckdir / meta["model_file"]
    if not model.is_file() or _sha256(model) != meta["sha256"]:
        raise ConfigError(f"checkpoint model {model} is missing or does not match the SHA-256 in "
                          f"{ckdir / STATE_FILE}; the checkpoint is damaged and cannot be resumed.")
    server_state: dict[str, torch.Tensor] = {}
    if meta.get("server_file"):
        opt = ckdir / meta["server_file"]
        if not opt.is_file() or _sha256(opt) != meta.get("server_sha256"):
            raise ConfigError(f"checkpoint server-optimizer state {opt} is missing or does not match the SHA-256 in "
                              f"{ckdir / STATE_FILE}; the checkpoint is damaged and cannot be resumed.")
        server_state = load_file(str(opt))
    return Checkpoint(run_dir=run_dir, round=int(meta["round"]), state=load_file(str(model)),
                      config=meta["config"], rounds=meta["rounds"], rng=meta["rng"], extra=meta.get("extra", {}),
                      server_state=server_state, server_steps=int(meta.get("server_steps", 0)))


def clear_checkpoint(run_dir: Path) -> None:
    ckdir = Path(run_dir) / DIRNAME
    if ckdir.exists():
        log.warning("starting a fresh run in %s: removing the checkpoint of an earlier run there", run_dir)
        shutil.rmtree(ckdir)


# --------------------------------------------------------------------------- resume
def resume_dir(cfg: RunConfig, fresh_dir: Path) -> Path | None:
    """The run directory to continue, or None to start a fresh run in ``fresh_dir``.

    ``resume=''``: None. ``resume='auto'``: ``fresh_dir`` (output-dir/run-name) when it
    holds a checkpoint, else None. Anything else is a run directory that must hold one
    (relative paths resolve against the server's working directory).
    """
    value = str(cfg.resume).strip()
    if not value:
        return None
    if value == "auto":
        if not cfg.run_name:
            raise ConfigError("run-config key 'resume' = 'auto' needs a fixed 'run-name' to know which run to "
                              "continue (e.g. run-name='exp1' resume='auto'); or give the run directory: "
                              "resume='runs/<name>'.")
        return fresh_dir if has_checkpoint(fresh_dir) else None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if not has_checkpoint(path):
        raise ConfigError(f"run-config key 'resume' = {value!r}: {str(path)!r} has no checkpoint "
                          f"({DIRNAME}/{STATE_FILE}); give the directory of a stopped run, or resume='auto'.")
    return path


def check_compatible(saved: Mapping[str, Any], cfg: RunConfig) -> None:
    """Refuse to resume under settings that change what the rounds compute."""
    from atm_fl.config import KEY_BY_NAME

    now = cfg.to_dict()
    differ = []
    for name in sorted(set(saved) | set(now)):
        if name in MAY_CHANGE_ON_RESUME:
            continue
        default = KEY_BY_NAME[name].default if name in KEY_BY_NAME else None
        if saved.get(name, default) != now.get(name, default):
            differ.append(f"{name}: checkpoint {saved.get(name, default)!r}, now {now.get(name, default)!r}")
    schedule = now.get("alpha-schedule", "constant")
    if schedule != "constant" and saved.get("num-server-rounds") != now.get("num-server-rounds"):
        differ.append(f"num-server-rounds: checkpoint {saved.get('num-server-rounds')!r}, now "
                      f"{now.get('num-server-rounds')!r} (alpha-schedule={schedule!r} depends on it)")
    if differ:
        raise ConfigError("cannot resume: run-config differs from the stopped run's on "
                          + "; ".join(differ) + ". Resume with the same settings (only "
                          + ", ".join(sorted(MAY_CHANGE_ON_RESUME)) + " may change), or start a new run.")


__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "has_checkpoint", "clear_checkpoint", "resume_dir",
           "check_compatible", "rng_state", "restore_rng", "MAY_CHANGE_ON_RESUME"]

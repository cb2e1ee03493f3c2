"""The one validation boundary for replies: nothing reads a site's reply before it passes here.

Sites are separate organisations, so every reply is untrusted: buggy, truncated or
hostile. ``read_reply`` takes a reply and the message it answers and returns either
the parsed, checked content or the reason it is refused; it never raises. The checks:

* **identity** comes from the transport: a reply belongs to the (kind, round, task) of
  the message it answers (``reply_to_message_id``), and must come from the node that
  message was sent to. A payload that names another task or round is refused;
* **structure**: exactly the records the kind of reply carries, of the right types;
* **arrays**: for each tensor, the declared dtype, the declared shape, ``.npy`` bytes
  whose header agrees with both, and a byte length of exactly dtype size × shape;
  then the layout (every merged tensor, nothing else) and finiteness;
* **metrics**: known names only, finite, in range (accuracy in [0, 1]).

Merging never sees a vector that failed any of these; ``strategies.outliers`` then
judges the norms of the vectors that passed.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Message

from atm_fl.compression import decode_sparse
from atm_fl.task_vector import Layout

#: Metrics a client may report, with their valid range (inclusive).
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0), "f1": (0.0, 1.0), "mcc": (-1.0, 1.0), "loss": (0.0, math.inf),
    "num-examples": (0.0, math.inf), "steps": (0.0, math.inf), "seconds": (0.0, math.inf),
    "update-norm": (0.0, math.inf), "lr": (0.0, math.inf),
}
ALLOWED_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
INDEX_DTYPES = {"int32": np.dtype("<i4"), "int64": np.dtype("<i8")}
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
MAX_TEXT = 500  # characters of a site's free text (an error message) that reach logs and results


@dataclass(frozen=True)
class Sent:
    """What the server asked: the kind of message, the global round, the task and the node."""

    kind: str  # "train" | "evaluate"
    round: int
    task: str
    node: int


@dataclass
class TrainReply:
    """A checked train reply: the flat float32 task vector, training metrics and the ride-along evaluation."""

    vector: torch.Tensor
    metrics: dict[str, float]
    evaluation: dict[str, float] | None = None
    evaluation_error: str | None = None
    bytes: int = 0


@dataclass
class Outcome:
    """The verdict on one reply: what it answers (if anything), and its content or why it was refused."""

    sent: Sent | None
    content: TrainReply | dict[str, float] | None = None
    refused: str | None = None  # a reply that was read and refused
    error: str | None = None  # the site reported an error (Flower error reply)
    notes: list[str] = field(default_factory=list)


class Refused(ValueError):
    """Raised inside this module only; ``read_reply`` turns it into ``Outcome.refused``."""


def clip_text(text: Any) -> str:
    s = str(text)
    return s if len(s) <= MAX_TEXT else s[:MAX_TEXT] + f"... ({len(s)} characters)"


def read_reply(reply: Message, sent_by_id: dict[str, Sent], layout: Layout) -> Outcome:
    """Match ``reply`` to the message it answers and check its content; never raises.

    Returns an ``Outcome`` with ``sent`` None when the reply answers none of ``sent_by_id``
    (the caller ignores and logs it).
    """
    try:
        sent = sent_by_id.get(str(reply.metadata.reply_to_message_id))
    except Exception:  # noqa: BLE001 - no metadata at all
        return Outcome(None, refused="reply without readable metadata")
    if sent is None:
        return Outcome(None, refused=f"reply to a message this round did not send "
                                     f"({clip_text(reply.metadata.reply_to_message_id)!r})")
    try:
        if reply.has_error():
            return Outcome(sent, error=clip_text(getattr(reply.error, "reason", "unknown error")))
        src = int(reply.metadata.src_node_id)
        if src != sent.node:
            raise Refused(f"answered by node {src}, but the {sent.kind} message for task {sent.task!r} went to "
                          f"node {sent.node}")
        if sent.kind == "train":
            return Outcome(sent, content=_read_train(reply, sent, layout))
        return Outcome(sent, content=_read_evaluate(reply, sent))
    except Refused as exc:
        return Outcome(sent, refused=str(exc))
    except Exception as exc:  # noqa: BLE001 - whatever a malformed reply triggers is a refusal, not a crash
        return Outcome(sent, refused=f"malformed reply ({type(exc).__name__}: {clip_text(exc)})")


# --------------------------------------------------------------------------- records
def _records(reply: Message, required: dict[str, str], optional: dict[str, str]) -> dict[str, Any]:
    """The reply's records by name, checked against {name: 'array'|'metric'|'config'}."""
    content = reply.content
    kinds = {"array": content.array_records, "metric": content.metric_records, "config": content.config_records}
    found: dict[str, Any] = {}
    names = set(content.keys())
    unexpected = sorted(names - set(required) - set(optional))
    if unexpected:
        raise Refused(f"unexpected record(s) {', '.join(map(repr, unexpected[:5]))}; a reply carries "
                      f"{', '.join(sorted({**required, **optional}))}")
    for name, kind in {**required, **optional}.items():
        if name not in names:
            if name in required:
                raise Refused(f"missing the {kind} record {name!r}")
            continue
        if name not in kinds[kind]:
            raise Refused(f"record {name!r} is not a {kind} record")
        found[name] = kinds[kind][name]
    return found


def _identity(info, sent: Sent, want_round: bool) -> None:
    """The payload may repeat what the server asked; it may not claim anything else."""
    if info is None:
        return
    if "task" in info and str(info["task"]) != sent.task:
        raise Refused(f"claims task {clip_text(info['task'])!r}, but the message it answers asked for task "
                      f"{sent.task!r}")
    if want_round and "server-round" in info:
        claimed = info["server-round"]
        if isinstance(claimed, bool) or not isinstance(claimed, int) or claimed != sent.round:
            raise Refused(f"claims round {clip_text(claimed)}, but the message it answers asked about round "
                          f"{sent.round}")


def check_metrics(record, *, require: tuple[str, ...] = (), where: str = "metrics") -> dict[str, float]:
    """Known metric names only, each a finite number in its range; ``require`` must be present."""
    out: dict[str, float] = {}
    for name in record.keys():
        if name not in METRIC_RANGES:
            continue  # ignored: nothing downstream reads it, and it never reaches results.json
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Refused(f"{where}: {name!r} is a {type(value).__name__}, expected a number")
        value = float(value)
        lo, hi = METRIC_RANGES[name]
        if not (math.isfinite(value) and lo <= value <= hi):
            raise Refused(f"{where}: {name!r} = {value!r} is outside [{lo:g}, {hi:g}]")
        out[name] = value
    missing = [m for m in require if m not in out]
    if missing:
        raise Refused(f"{where}: missing {', '.join(missing)}")
    return out


def _read_evaluate(reply: Message, sent: Sent) -> dict[str, float]:
    recs = _records(reply, {"metrics": "metric"}, {"info": "config"})
    _identity(recs.get("info"), sent, want_round=True)
    return check_metrics(recs["metrics"], require=("accuracy",), where="evaluation")


def _read_train(reply: Message, sent: Sent, layout: Layout) -> TrainReply:
    recs = _records(reply, {"arrays": "array", "metrics": "metric", "info": "config"}, {"evaluation": "metric"})
    info = recs["info"]
    _identity(info, sent, want_round=False)
    out = TrainReply(vector=torch.empty(0), metrics=check_metrics(recs["metrics"], where="training metrics"))
    if "evaluation" in recs:
        out.evaluation = check_metrics(recs["evaluation"], require=("accuracy",), where="evaluation")
    elif "evaluation-error" in info:
        out.evaluation_error = clip_text(info["evaluation-error"])
    encoding = info.get("encoding", "dense")
    arrays = recs["arrays"]
    out.bytes = int(arrays.count_bytes())
    if encoding == "dense":
        out.vector = _dense_vector(arrays, layout)
    elif encoding == "sparse":
        views = {name: _readonly_tensor(_array(arrays, name, {**ALLOWED_DTYPES, **INDEX_DTYPES}, None))
                 for name in ("indices", "values") if name in arrays}
        flat, reason = decode_sparse(views, layout)
        if reason:
            raise Refused(reason)
        out.vector = flat
    else:
        raise Refused(f"unknown upload encoding {clip_text(encoding)!r} (expected 'dense' or 'sparse')")
    if not bool(torch.isfinite(out.vector).all()):
        raise Refused(f"tensor {_first_bad(out.vector, layout)!r} has NaN or Inf entries")
    return out


# --------------------------------------------------------------------------- arrays
def _array(record, name: str, dtypes: dict[str, np.dtype], shape: tuple[int, ...] | None) -> np.ndarray:
    """A read-only view of one Array's data after checking dtype, shape, header and byte length."""
    arr = record[name]
    declared = getattr(arr, "dtype", None)
    if declared not in dtypes:
        raise Refused(f"tensor {name!r} has dtype {clip_text(declared)!r}, expected {' or '.join(dtypes)}")
    dims = tuple(getattr(arr, "shape", ()))
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in dims):
        raise Refused(f"tensor {name!r} declares an invalid shape {clip_text(dims)}")
    if shape is not None and dims != tuple(shape):
        raise Refused(f"tensor {name!r} has shape {dims}, expected {tuple(shape)}")
    if getattr(arr, "stype", None) != "numpy.ndarray":
        raise Refused(f"tensor {name!r} is serialised as {clip_text(getattr(arr, 'stype', None))!r}, "
                      "expected 'numpy.ndarray'")
    data = arr.data
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise Refused(f"tensor {name!r} has no byte data")
    head = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(head)
        if version not in _HEADER_READERS:
            raise ValueError(f"npy version {version}")
        h_shape, fortran, h_dtype = _HEADER_READERS[version](head)
    except Exception as exc:  # noqa: BLE001
        raise Refused(f"tensor {name!r} is not a .npy array ({type(exc).__name__}: {clip_text(exc)})") from None
    want = dtypes[declared]
    if h_dtype != want or fortran or tuple(h_shape) != dims:
        raise Refused(f"tensor {name!r}: its bytes hold a {h_dtype}{'(Fortran order)' if fortran else ''} array of "
                      f"shape {tuple(h_shape)}, but it declares {declared} {dims}")
    count = math.prod(dims)
    body = len(data) - head.tell()
    if body != count * want.itemsize:
        raise Refused(f"tensor {name!r} has {body} data bytes; {declared} {dims} needs {count * want.itemsize}")
    return np.frombuffer(data, dtype=want, count=count, offset=head.tell()).reshape(dims)


def _dense_vector(record, layout: Layout) -> torch.Tensor:
    expected = dict(layout.entries)
    keys = list(record.keys())
    missing = [k for k in expected if k not in keys]
    extra = [k for k in keys if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) e.g. {missing[0]!r}")
        if extra:
            parts.append(f"{len(extra)} unexpected tensor(s) e.g. {clip_text(extra[0])!r}")
        raise Refused("; ".join(parts))
    flat = torch.empty(layout.numel, dtype=torch.float32)
    offset = 0
    for name, shape in layout.entries:
        view = _array(record, name, ALLOWED_DTYPES, tuple(shape))
        n = view.size
        # One copy, straight out of the message bytes (float16 widens on the way).
        flat[offset:offset + n].copy_(_readonly_tensor(view.reshape(-1)))
        offset += n
    return flat


def _readonly_tensor(view: np.ndarray) -> torch.Tensor:
    # Message bytes are read-only; the tensor is only read from, so torch's warning about
    # non-writable buffers does not apply.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(view)


def _first_bad(flat: torch.Tensor, layout: Layout) -> str:
    offset = 0
    for name, shape in layout.entries:
        n = math.prod(shape)
        if not bool(torch.isfinite(flat[offset:offset + n]).all()):
            return name
        offset += n
    return "?"

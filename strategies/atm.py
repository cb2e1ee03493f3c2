"""The ATM strategy: one message per task, validated task vectors, a plugin merge, base + alpha * m.

``ATMStrategy`` subclasses Flower's ``FedAvg`` and keeps its message plumbing, but:

* it addresses each round's messages to one node per task (from the server's task
  discovery) instead of sampling, and tells the node which task to run;
* it keeps the round's base (``aggregate_train`` is not given it);
* it weights tasks uniformly and merges task vectors with the plugin from the
  registry; the update is ``base + alpha * merge(task vectors)``;
* it refuses malformed, non-finite and outlying updates, and fails the round
  (``RoundFailed``) rather than keep an unchanged model when too few remain;
* it evaluates every round's model on every task, round 0 (the starting model)
  included. By default (``evaluate_in_train``) that evaluation rides with the next
  round's train message: the client scores the base it receives before fine-tuning
  it, so a round costs one message per task instead of two. The last round's model,
  and any model whose evaluation did not come back with a train reply (a crashed
  client), get a separate evaluate message;
* it can continue a stopped run: with ``round_offset`` rounds already done, Flower's
  round ``i`` is global round ``offset + i`` everywhere (the messages' ``server-round``,
  so clients continue their example streams; the records; the checkpoints).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import Any, Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from atm_fl.compression import decode_sparse
from atm_fl.results import RunRecorder
from atm_fl.task_vector import Layout, apply_update, flatten_record, record_views, unflatten
from atm_fl.plugins import MergeContext, MergeMethod
from strategies.validation import check_record, non_finite, norm_outliers

log = logging.getLogger(__name__)


class RoundFailed(RuntimeError):
    """A round cannot produce a trustworthy merge; the run stops with this message."""


class ATMStrategy(FedAvg):
    """Alternating Tuning and Merging.

    Parameters
    ----------
    method : MergeMethod
        Merge plugin (``strategies.registry``).
    method_params : dict
        The plugin's parameters, defaults filled in.
    layout : Layout
        Names and shapes of the merged backbone tensors.
    task_nodes : dict[str, int]
        Task name -> node id serving it (from discovery).
    alpha : float (default: 1.0)
        Server step: ``base + alpha * m``.
    min_task_fraction : float (default: 1.0)
        Fraction of tasks whose valid vectors a round needs; fewer raise ``RoundFailed``.
    max_norm_ratio : float (default: 10.0)
        Refuse vectors whose norm exceeds this multiple of the round median; 0 disables.
    seed : int (default: 0)
        Seeds the plugins' randomness (DARE masks) per round and task.
    recorder : RunRecorder, optional
        Receives per-round metrics, refusals, timings and bytes.
    on_round_end : callable, optional
        ``on_round_end(server_round, state_dict)`` once a round is merged *and* evaluated
        (checkpoints); ``state_dict`` is the round's new base.
    round_offset : int (default: 0)
        Rounds a stopped run already completed (resume): Flower's round i is round offset + i.
    evaluate_in_train : bool (default: True)
        Evaluate round r's model at the start of round r + 1's train messages instead
        of in a separate evaluate phase (run-config ``evaluate-in-train``).
    """

    def __init__(self, method: MergeMethod, method_params: dict[str, Any], layout: Layout,
                 task_nodes: dict[str, int], *, alpha: float = 1.0, min_task_fraction: float = 1.0,
                 max_norm_ratio: float = 10.0, seed: int = 0, recorder: RunRecorder | None = None,
                 on_round_end: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
                 round_offset: int = 0, evaluate_in_train: bool = True) -> None:
        super().__init__(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
        self.method, self.method_params = method, dict(method_params)
        self.layout = layout
        self.task_nodes = dict(task_nodes)
        self.alpha = alpha
        self.min_task_fraction = min_task_fraction
        self.max_norm_ratio = max_norm_ratio
        self.seed = seed
        self.recorder = recorder
        self.on_round_end = on_round_end
        self.round_offset = int(round_offset)
        self.evaluate_in_train = bool(evaluate_in_train)
        self._last_round = 0  # global number of the run's last round (set by start)
        self._eval_split = "test"
        # Evaluations that did not ride with a train reply: task -> reason; sent separately.
        self._eval_lost: dict[str, str] = {}
        self._eval_pending: set[tuple[int, str]] = set()  # (round, task) out for evaluation
        self.scores: dict[int, dict[str, dict[str, float]]] = {}  # round -> task -> evaluation metrics
        self._unlogged: set[int] = set()  # rounds with new scores, logged once their evaluation settles
        self._base: dict[str, torch.Tensor] | None = None
        self._merged: tuple[int, dict[str, torch.Tensor]] | None = None  # (round, new base) until evaluated
        self._round_started = 0.0
        self._eval_started = 0.0

    @property
    def tasks(self) -> list[str]:
        return list(self.task_nodes)

    def summary(self) -> None:
        log.info("ATM: merge %s %s, alpha %g, %d tasks, %d merged tensors (%d entries)", self.method.name,
                 self.method_params, self.alpha, len(self.task_nodes), len(self.layout.entries), self.layout.numel)

    # --- messages ------------------------------------------------------------------
    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, kind: str,
                  tasks: Iterable[str] | None = None, *, charge_round: int | None = None) -> list[Message]:
        """One message per task (all, or ``tasks``); bytes are charged to ``charge_round`` (default: this one)."""
        out = []
        for task in (self.tasks if tasks is None else tasks):
            cfg = ConfigRecord({**dict(config), "server-round": server_round, "task": task})
            out.append(Message(RecordDict({"arrays": arrays, "config": cfg}), message_type=kind,
                               dst_node_id=self.task_nodes[task]))
        if self.recorder is not None and out:
            charged = server_round if charge_round is None else charge_round
            self.recorder.round(charged).bytes_sent += arrays.count_bytes() * len(out)
        return out

    # Flower calls the public methods with its own round count (1..num_rounds); they add
    # ``round_offset`` so everything below works on global rounds.
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self._base = record_views(arrays)  # read in place; the round's new base is a fresh dict
        self._round_started = time.perf_counter()
        if self.evaluate_in_train:
            # The client first scores the base it receives: round (server_round - 1)'s model.
            config = ConfigRecord({**dict(config), "evaluate-split": self._eval_split})
            self._eval_pending = {(server_round - 1, t) for t in self.tasks}
        return self._messages(server_round, arrays, config, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self._eval_started = time.perf_counter()
        msgs = []
        if self._eval_lost and self._base is not None:
            # Evaluations of the previous model that a failed train reply took with it.
            lost = [t for t in self.tasks if t in self._eval_lost]
            log.info("round %d: evaluating round %d's model separately on %s (its train reply brought no score: %s)",
                     server_round, server_round - 1, ", ".join(lost), "; ".join(self._eval_lost[t] for t in lost))
            msgs += self._messages(server_round - 1, ArrayRecord(self._base), config, MessageType.EVALUATE, lost,
                                   charge_round=server_round)
            self._eval_pending |= {(server_round - 1, t) for t in lost}
            self._eval_lost = {}
        if not self.evaluate_in_train or server_round >= self._last_round:
            msgs += self._configure_evaluate(server_round, arrays, config)
        return msgs

    def _configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> list[Message]:
        self._eval_pending |= {(server_round, t) for t in self.tasks}
        return self._messages(server_round, arrays, config, MessageType.EVALUATE)

    # --- replies -------------------------------------------------------------------
    def _task_of(self, msg: Message) -> str:
        if not msg.has_error() and "info" in msg.content.config_records:
            return str(msg.content["info"]["task"])
        by_node = {n: t for t, n in self.task_nodes.items()}
        return by_node.get(msg.metadata.src_node_id, f"node-{msg.metadata.src_node_id}")

    def _decode(self, msg: Message) -> tuple[torch.Tensor | None, str | None]:
        """The reply's task vector as one flat float32 vector in layout order, or the reason it is refused."""
        info = msg.content.config_records.get("info")
        encoding = str(info.get("encoding", "dense")) if info is not None else "dense"
        record = msg.content["arrays"]
        if encoding == "sparse":
            return decode_sparse(record_views(record), self.layout)
        if encoding != "dense":
            return None, f"unknown upload encoding {encoding!r} (expected 'dense' or 'sparse')"
        reason = check_record(record, self.layout)
        if reason:
            return None, reason
        flat = flatten_record(record, self.layout)  # one copy, straight out of the message bytes
        reason = non_finite(flat, self.layout)
        return (None, reason) if reason else (flat, None)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None,
                                                                                    MetricRecord | None]:
        server_round += self.round_offset
        if self._base is None:
            raise RoundFailed("aggregate_train called before configure_train: the round has no base")
        rec = self.recorder.round(server_round) if self.recorder is not None else None
        vectors: dict[str, torch.Tensor] = {}  # task -> flat float32 task vector
        refused: dict[str, str] = {}
        failed: dict[str, str] = {}
        train_metrics: dict[str, dict[str, float]] = {}
        evaluated: dict[str, dict[str, float]] = {}  # the previous model's scores that rode along
        eval_failed: dict[str, str] = {}
        for msg in replies:
            task = self._task_of(msg)
            if msg.has_error():
                failed[task] = f"client error: {msg.error.reason}"
                continue
            if rec is not None:
                rec.bytes_received += msg.content["arrays"].count_bytes()
            if self.evaluate_in_train:
                info = msg.content.config_records.get("info")
                if "evaluation" in msg.content.metric_records:
                    evaluated[task] = {k: float(v) for k, v in msg.content["evaluation"].items()}
                elif info is not None and "evaluation-error" in info:
                    eval_failed[task] = f"evaluation: client error: {info['evaluation-error']}"
            flat, reason = self._decode(msg)
            if reason:
                refused[task] = reason
                continue
            vectors[task] = flat
            train_metrics[task] = dict(msg.content["metrics"])
        missing = [t for t in self.task_nodes if t not in vectors and t not in refused and t not in failed]
        for t in missing:
            failed[t] = "no reply before round-timeout"
        if self.evaluate_in_train:
            self._record_evaluations(server_round - 1, evaluated, eval_failed)
            # Replies that never came (or came without a score) leave the previous model
            # unscored on their task: configure_evaluate sends those tasks a separate message.
            self._eval_lost = {t: failed.get(t, "no evaluation in the train reply")
                               for t in self.tasks if t not in evaluated and t not in eval_failed}
        norms = {t: float(torch.linalg.vector_norm(v, dtype=torch.float64)) for t, v in vectors.items()}
        for t, why in norm_outliers(norms, self.max_norm_ratio).items():
            refused[t] = why
            del vectors[t]
        for t, why in refused.items():
            log.warning("round %d: refused task vector of %s: %s", server_round, t, why)
        for t, why in failed.items():
            log.warning("round %d: task %s failed: %s", server_round, t, why)
        if rec is not None:
            rec.refused = [{"task": t, "reason": r} for t, r in refused.items()]
            rec.failed = [{"task": t, "reason": r} for t, r in failed.items()]
            rec.train = train_metrics

        needed = max(1, math.ceil(self.min_task_fraction * len(self.task_nodes) - 1e-9))
        if len(vectors) < needed:
            if rec is not None and self.recorder is not None:
                self.recorder.write()
            raise RoundFailed(
                f"round {server_round}: {len(vectors)} usable task vector(s) of {len(self.task_nodes)} "
                f"(refused: {refused or 'none'}; failed: {failed or 'none'}); the round needs {needed} "
                f"(min-task-fraction={self.min_task_fraction:g}). Fix the failing clients or lower min-task-fraction.")

        tasks = [t for t in self.task_nodes if t in vectors]
        t0 = time.perf_counter()
        flat = [vectors[t] for t in tasks]
        del vectors
        ctx = MergeContext(layout=self.layout, tasks=tuple(tasks), server_round=server_round, seed=self.seed)
        merged = self.method(flat, ctx, **self.method_params)
        if merged.shape != (self.layout.numel,) or not bool(torch.isfinite(merged).all()):
            raise RoundFailed(f"round {server_round}: merge {self.method.name!r} returned a "
                              f"{'non-finite' if merged.shape == (self.layout.numel,) else 'mis-shaped'} vector")
        new_state = apply_update(self._base, unflatten(merged, self.layout), self.alpha)
        if rec is not None:
            rec.merge_seconds = time.perf_counter() - t0
            rec.round_seconds = time.perf_counter() - self._round_started
        log.info("round %d: merged %d task vector(s) with %s in %.2fs (|m| = %.4g)", server_round, len(tasks),
                 self.method.name, time.perf_counter() - t0, float(merged.norm()))
        self._merged = (server_round, new_state)  # checkpointed once the round is evaluated
        metrics = MetricRecord({f"{t}/{k}": float(v) for t, m in train_metrics.items() for k, v in m.items()}
                               | {"num-tasks-merged": len(tasks)})
        return ArrayRecord(new_state), metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self._aggregate_evaluate(server_round + self.round_offset, replies)

    def _record_evaluations(self, server_round: int, per_task: dict[str, dict[str, float]],
                            failed: dict[str, str]) -> None:
        """Store scores (and failures) of round ``server_round``'s model; settle them as pending."""
        self._eval_pending -= {(server_round, t) for t in [*per_task, *failed]}
        if per_task:
            self.scores.setdefault(server_round, {}).update(per_task)
            self._unlogged.add(server_round)
        for t, why in failed.items():
            log.warning("round %d: task %s failed: %s", server_round, t, why)
        if self.recorder is not None and (per_task or failed):
            rec = self.recorder.round(server_round)
            rec.eval.update(per_task)
            rec.failed += [{"task": t, "reason": r} for t, r in failed.items()]

    def _aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Record evaluate replies (each names the round whose model it scored); log every completed round."""
        scored: dict[int, dict[str, dict[str, float]]] = {}
        errors: dict[str, str] = {}
        for msg in replies:
            task = self._task_of(msg)
            if msg.has_error():
                errors[task] = f"evaluation: client error: {msg.error.reason}"
                continue
            info = msg.content["info"]
            evaluated_round = int(info["server-round"]) if "server-round" in info else server_round
            scored.setdefault(evaluated_round, {})[task] = {k: float(v) for k, v in msg.content["metrics"].items()}
        for r, per_task in sorted(scored.items()):
            self._record_evaluations(r, per_task, {})
        for r, t in sorted(self._eval_pending):  # what is still out failed, with its reply's error if any
            self._record_evaluations(r, {}, {t: errors.get(t, "evaluation: no reply before round-timeout")})
        if self.recorder is not None:
            self.recorder.round(server_round).eval_seconds = time.perf_counter() - self._eval_started
        if self._merged is not None and self._merged[0] == server_round:
            if self.on_round_end is not None:
                t0 = time.perf_counter()
                self.on_round_end(server_round, self._merged[1])
                if self.recorder is not None:
                    self.recorder.round(server_round).checkpoint_seconds = time.perf_counter() - t0
            self._merged = None
        if self.recorder is not None:
            self.recorder.write()
        out = None
        for r in sorted(self._unlogged):
            out = self._log_round(r)
        self._unlogged.clear()
        return out

    def _log_round(self, server_round: int) -> MetricRecord:
        per_task = self.scores[server_round]
        avg = sum(m["accuracy"] for m in per_task.values()) / len(per_task)
        log.info("round %d accuracy: %s | average %.2f%%", server_round,
                 ", ".join(f"{t} {100 * m['accuracy']:.2f}%" for t, m in per_task.items()), 100 * avg)
        return MetricRecord({f"{t}/accuracy": m["accuracy"] for t, m in per_task.items()}
                            | {"average/accuracy": avg, "evaluated-round": server_round})

    # --- run -----------------------------------------------------------------------
    def evaluate_round(self, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord | None = None,
                       timeout: float = 3600) -> MetricRecord | None:
        """One federated evaluation of ``arrays`` on every task (round 0 when evaluation does not ride with training)."""
        self._eval_started = time.perf_counter()
        msgs = self._configure_evaluate(server_round, arrays, config or ConfigRecord())
        return self._aggregate_evaluate(server_round, grid.send_and_receive(msgs, timeout=timeout))

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn=None) -> Result:
        """Evaluate the starting model on every task (round 0), then run ``num_rounds`` rounds.

        With ``evaluate_in_train`` the starting model is scored by round 1's train messages
        (on a resumed run: the checkpointed model, by the first resumed round). Otherwise
        round 0 is a separate evaluation, which a resumed run skips: the stopped run recorded it.
        """
        self._last_round = self.round_offset + num_rounds
        if evaluate_config is not None and "split" in evaluate_config:
            self._eval_split = str(evaluate_config["split"])
        if self.round_offset == 0 and not self.evaluate_in_train:
            self.evaluate_round(grid, 0, initial_arrays, evaluate_config, timeout)
        elif self.round_offset:
            log.info("resuming after round %d: running rounds %d..%d (Flower counts them from 1)",
                     self.round_offset, self.round_offset + 1, self.round_offset + num_rounds)
        return super().start(grid=grid, initial_arrays=initial_arrays, num_rounds=num_rounds, timeout=timeout,
                             train_config=train_config, evaluate_config=evaluate_config, evaluate_fn=evaluate_fn)

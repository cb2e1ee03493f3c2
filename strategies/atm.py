"""The ATM strategy: one message per task, checked replies, a plugin merge, a server update rule.

``ATMStrategy`` is a Flower ``Strategy`` (``configure_train``, ``aggregate_train``,
``configure_evaluate``, ``aggregate_evaluate``, ``summary``) with its own ``start`` loop:

* it addresses each round's messages to one node per task (from the server's task
  discovery) and tells the node which task to run;
* a reply's task and round are those of the message it answers, never what its payload
  says (``strategies.replies`` is the one validation boundary: structure, arrays, metrics,
  identity); outlying norms are refused by ``strategies.outliers``;
* it merges the surviving task vectors uniformly with the merge plugin, and turns the
  merged vector m into the base's change with the server update rule (``none``:
  ``base + alpha * m``; momentum, Adam, Yogi, Adagrad), at the round's ``alpha`` from
  the ``alpha-schedule``;
* it fails the round (``RoundFailed``) rather than keep an unchanged model when fewer
  than ``min-task-fraction`` of the tasks gave a usable vector;
* it evaluates every round's model on every task, round 0 included; by default
  (``evaluate_in_train``) that evaluation rides with the next round's train message, and
  only the last round's model (or one whose evaluation a failed reply took with it) gets
  a separate evaluate message;
* with ``round_offset`` rounds already done (resume), Flower-style round ``i`` is global
  round ``offset + i`` everywhere: messages, records, checkpoints, schedules.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Iterable
from typing import Any, Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from atm_fl.plugins import MergeContext, MergeMethod, ServerOptimizer
from atm_fl.results import RunRecorder
from atm_fl.schedules import alpha_at
from atm_fl.task_vector import Layout, record_views, unflatten
from strategies.outliers import norm_outliers
from strategies.replies import Outcome, Sent, TrainReply, clip_text, read_reply
from strategies.run_control import send_and_receive

log = logging.getLogger(__name__)


class RoundFailed(RuntimeError):
    """A round cannot produce a trustworthy merge; the run stops with this message."""


class RunStopped(RuntimeError):
    """The run was stopped from outside (``flwr stop``, Ctrl-C on ``atm-fl run``); finished rounds are kept."""


def _none_step(m, state, lr, t):
    return lr * m


NO_OPTIMIZER = ServerOptimizer("none", _none_step)


class ATMStrategy(Strategy):
    """Alternating Tuning and Merging.

    Parameters
    ----------
    method : MergeMethod
        Merge plugin (``atm_fl.plugins``).
    method_params : dict
        The plugin's parameters, defaults filled in.
    layout : Layout
        Names and shapes of the merged backbone tensors.
    task_nodes : dict[str, int]
        Task name -> node id serving it (from discovery).
    alpha : float (default: 1.0)
        Server learning rate (before the schedule).
    optimizer : ServerOptimizer (default: ``none``)
        Server update rule; ``optimizer_params`` its parameters.
    alpha_schedule : str (default: "constant")
        ``constant``, ``linear`` or ``cosine`` over ``total_rounds`` (``atm_fl.schedules``).
    alpha_end_factor : float (default: 0.0)
        Where a decaying schedule heads, as a fraction of ``alpha``.
    total_rounds : int, optional
        The run's number of rounds (schedules); default: ``round_offset`` + the rounds ``start`` runs.
    min_task_fraction : float (default: 1.0)
        Fraction of tasks whose valid vectors a round needs; fewer raise ``RoundFailed``.
    max_norm_ratio : float (default: 10.0)
        Outlier bound against the previous round's and this round's median norms; 0 disables.
    max_update_ratio : float (default: 0.0)
        Outlier bound against the base's norm for task vectors; 0 disables. (The server step is
        the server's own doing: its size is recorded, and only a non-finite one fails the round.)
    seed : int (default: 0)
        Seeds the plugins' randomness (DARE masks) per round and task.
    recorder : RunRecorder, optional
        Receives per-round metrics, refusals, timings and bytes.
    on_round_end : callable, optional
        ``on_round_end(server_round, state_dict)`` once a round is merged *and* evaluated
        (checkpoints); ``optimizer_state`` / ``optimizer_steps`` are then current.
    round_offset : int (default: 0)
        Rounds a stopped run already completed (resume).
    evaluate_in_train : bool (default: True)
        Evaluate round r's model at the start of round r + 1's train messages.
    optimizer_state : dict, optional; optimizer_steps : int (default: 0)
        The update rule's state and step count from a checkpoint (resume).
    stop_check : callable, optional
        ``stop_check() -> str | None``, asked between phases; a reason stops the run (``RunStopped``).
    rediscover : callable, optional
        ``rediscover(tasks) -> {task: node}`` for tasks whose node failed in the previous
        round (a restarted site may come back under a new node id).
    """

    def __init__(self, method: MergeMethod, method_params: dict[str, Any], layout: Layout,
                 task_nodes: dict[str, int], *, alpha: float = 1.0, optimizer: ServerOptimizer | None = None,
                 optimizer_params: dict[str, Any] | None = None, alpha_schedule: str = "constant",
                 alpha_end_factor: float = 0.0, total_rounds: int | None = None, min_task_fraction: float = 1.0,
                 max_norm_ratio: float = 10.0, max_update_ratio: float = 0.0, seed: int = 0,
                 recorder: RunRecorder | None = None,
                 on_round_end: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
                 round_offset: int = 0, evaluate_in_train: bool = True,
                 optimizer_state: dict[str, torch.Tensor] | None = None, optimizer_steps: int = 0,
                 stop_check: Callable[[], str | None] | None = None,
                 rediscover: Callable[[list[str]], dict[str, int]] | None = None) -> None:
        self.method, self.method_params = method, dict(method_params)
        self.layout = layout
        self.task_nodes = dict(task_nodes)
        self.alpha = alpha
        self.optimizer = optimizer or NO_OPTIMIZER
        self.optimizer_params = dict(optimizer_params or {})
        self.optimizer_state = dict(optimizer_state or {})
        self.optimizer_steps = int(optimizer_steps)
        self.alpha_schedule, self.alpha_end_factor = alpha_schedule, alpha_end_factor
        self.total_rounds = total_rounds
        self.min_task_fraction = min_task_fraction
        self.max_norm_ratio = max_norm_ratio
        self.max_update_ratio = max_update_ratio
        self.seed = seed
        self.recorder = recorder
        self.on_round_end = on_round_end
        self.round_offset = int(round_offset)
        self.evaluate_in_train = bool(evaluate_in_train)
        self.stop_check = stop_check
        self.rediscover = rediscover
        self._last_round = 0  # global number of the run's last round (set by start)
        self._eval_split = "test"
        self._outbox: list[tuple[Message, Sent]] = []  # the messages of the current phase
        self._eval_lost: dict[str, str] = {}  # task -> reason its evaluation did not ride with training
        self._eval_pending: set[tuple[int, str]] = set()  # (round, task) out for evaluation
        self._node_failed: set[str] = set()  # tasks whose node gave no usable answer last round
        self.scores: dict[int, dict[str, dict[str, float]]] = {}  # round -> task -> evaluation metrics
        self._unlogged: set[int] = set()
        self._base: dict[str, torch.Tensor] | None = None
        self._base_norm = 0.0
        self._prev_median: float | None = None  # median norm of the previous round's accepted vectors
        self._merged: tuple[int, dict[str, torch.Tensor]] | None = None  # (round, new base) until evaluated
        self._round_started = 0.0
        self._eval_started = 0.0

    @property
    def tasks(self) -> list[str]:
        return list(self.task_nodes)

    def summary(self) -> None:
        log.info("ATM: merge %s %s, server optimizer %s %s, alpha %g (%s), %d tasks, %d merged tensors "
                 "(%d entries)", self.method.name, self.method_params, self.optimizer.name, self.optimizer_params,
                 self.alpha, self.alpha_schedule, len(self.task_nodes), len(self.layout.entries), self.layout.numel)

    def round_alpha(self, server_round: int) -> float:
        """The server learning rate of global round ``server_round``."""
        total = max(self.total_rounds or self._last_round or server_round, server_round)
        return alpha_at(self.alpha, self.alpha_schedule, self.alpha_end_factor, server_round, total)

    # --- messages ------------------------------------------------------------------
    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, kind: str,
                  tasks: Iterable[str] | None = None, *, charge_round: int | None = None) -> list[Message]:
        """One message per task (all, or ``tasks``), remembered in the outbox so replies can be matched."""
        out = []
        for task in (self.tasks if tasks is None else tasks):
            cfg = ConfigRecord({**dict(config), "server-round": server_round, "task": task})
            msg = Message(RecordDict({"arrays": arrays, "config": cfg}), message_type=kind,
                          dst_node_id=self.task_nodes[task])
            self._outbox.append((msg, Sent("train" if kind == MessageType.TRAIN else "evaluate", server_round, task,
                                           self.task_nodes[task])))
            out.append(msg)
        if self.recorder is not None and out:
            charged = server_round if charge_round is None else charge_round
            self.recorder.round(charged).bytes_sent += arrays.count_bytes() * len(out)
        return out

    def _read(self, replies: Iterable[Message]) -> list[Outcome]:
        """Every reply through the validation boundary, matched to the message it answers (by message id)."""
        sent_by_id = {str(m.metadata.message_id): s for m, s in self._outbox}
        self._outbox = []
        outcomes, answered = [], set()
        for reply in replies:
            out = read_reply(reply, sent_by_id, self.layout)
            if out.sent is None:
                log.warning("ignored a reply: %s", out.refused)
                continue
            key = (out.sent.kind, out.sent.round, out.sent.task)
            if key in answered:
                log.warning("ignored a second reply for the %s message of task %s (round %d)", *key)
                continue
            answered.add(key)
            outcomes.append(out)
        return outcomes

    # Flower calls the public methods with its own round count (1..num_rounds); they add
    # ``round_offset`` so everything below works on global rounds.
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        if self._node_failed and self.rediscover is not None:
            moved = self.rediscover(sorted(self._node_failed))
            for task, node in moved.items():
                if task in self.task_nodes and node != self.task_nodes[task]:
                    log.info("round %d: task %s is now served by node %d (was %d)", server_round, task, node,
                             self.task_nodes[task])
                    self.task_nodes[task] = node
        self._base = record_views(arrays)  # read in place; the round's new base is a fresh dict
        self._base_norm = math.sqrt(sum(float(torch.sum(self._base[k].double() ** 2)) for k in self.layout.keys))
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

    # --- training replies ------------------------------------------------------------
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
        for out in self._read(replies):
            task = out.sent.task
            if out.sent.kind != "train":
                continue
            if out.error is not None:
                failed[task] = f"client error: {out.error}"
            elif out.refused is not None:
                refused[task] = out.refused
            else:
                reply: TrainReply = out.content  # type: ignore[assignment]
                if rec is not None:
                    rec.bytes_received += reply.bytes
                vectors[task] = reply.vector
                train_metrics[task] = reply.metrics
                if self.evaluate_in_train and reply.evaluation is not None:
                    evaluated[task] = reply.evaluation
                elif self.evaluate_in_train and reply.evaluation_error is not None:
                    eval_failed[task] = f"evaluation: client error: {reply.evaluation_error}"
        for t in self.tasks:
            if t not in vectors and t not in refused and t not in failed:
                failed[t] = "no reply before round-timeout"
        self._node_failed = set(failed)
        if self.evaluate_in_train:
            self._record_evaluations(server_round - 1, evaluated, eval_failed)
            # Replies that never came (or came refused or without a score) leave the previous
            # model unscored on their task: configure_evaluate sends those tasks a separate message.
            self._eval_lost = {t: failed.get(t, refused.get(t, "no evaluation in the train reply"))
                               for t in self.tasks if t not in evaluated and t not in eval_failed}
        norms = {t: float(torch.linalg.vector_norm(v, dtype=torch.float64)) for t, v in vectors.items()}
        for t, why in norm_outliers(norms, base_norm=self._base_norm, max_update_ratio=self.max_update_ratio,
                                    previous_median=self._prev_median, max_norm_ratio=self.max_norm_ratio).items():
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
            if self.recorder is not None:
                self.recorder.write()
            raise RoundFailed(
                f"round {server_round}: {len(vectors)} usable task vector(s) of {len(self.task_nodes)} "
                f"(refused: {refused or 'none'}; failed: {failed or 'none'}); the round needs {needed} "
                f"(min-task-fraction={self.min_task_fraction:g}). Fix the failing clients or lower min-task-fraction.")
        self._prev_median = statistics.median(norms[t] for t in vectors)

        tasks = [t for t in self.tasks if t in vectors]
        t0 = time.perf_counter()
        flat = [vectors[t] for t in tasks]
        del vectors
        ctx = MergeContext(layout=self.layout, tasks=tuple(tasks), server_round=server_round, seed=self.seed)
        merged = self.method(flat, ctx, **self.method_params)
        if merged.shape != (self.layout.numel,) or not bool(torch.isfinite(merged).all()):
            raise RoundFailed(f"round {server_round}: merge {self.method.name!r} returned a "
                              f"{'non-finite' if merged.shape == (self.layout.numel,) else 'mis-shaped'} vector")
        new_state, step_norm = self._server_step(server_round, merged)
        if rec is not None:
            rec.merge_seconds = time.perf_counter() - t0
            rec.round_seconds = time.perf_counter() - self._round_started
            rec.server = {"alpha": self.round_alpha(server_round), "merged_norm": float(merged.norm()),
                          "step_norm": step_norm, "base_norm": self._base_norm}
        log.info("round %d: merged %d task vector(s) with %s in %.2fs (|m| = %.4g, |step| = %.4g, alpha %.4g)",
                 server_round, len(tasks), self.method.name, time.perf_counter() - t0, float(merged.norm()), step_norm,
                 self.round_alpha(server_round))
        self._merged = (server_round, new_state)  # checkpointed once the round is evaluated
        metrics = MetricRecord({f"{t}/{k}": float(v) for t, m in train_metrics.items() if t in tasks
                                for k, v in m.items()} | {"num-tasks-merged": len(tasks)})
        return ArrayRecord(new_state), metrics

    def _server_step(self, server_round: int, merged: torch.Tensor) -> tuple[dict[str, torch.Tensor], float]:
        """base + step(m): the update rule's change of the base, checked before it is applied."""
        if not self.optimizer_state:
            self.optimizer_state = self.optimizer.init(self.layout.numel)
        self.optimizer_steps += 1
        delta = self.optimizer.step(merged, self.optimizer_state, self.round_alpha(server_round),
                                    self.optimizer_steps, **self.optimizer_params)
        step_norm = float(torch.linalg.vector_norm(delta, dtype=torch.float64))
        if not math.isfinite(step_norm):
            raise RoundFailed(f"round {server_round}: the server optimizer {self.optimizer.name!r} produced a "
                              "non-finite step; lower alpha or change server-params.")
        new = dict(self._base)
        for k, d in unflatten(delta, self.layout).items():
            b = self._base[k]
            new[k] = (b.float() + d).to(b.dtype)
        return new, step_norm

    # --- evaluation replies ----------------------------------------------------------
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
        """Record evaluate replies under the (round, task) each one's message asked about."""
        scored: dict[int, dict[str, dict[str, float]]] = {}
        errors: dict[tuple[int, str], str] = {}
        for out in self._read(replies):
            key = (out.sent.round, out.sent.task)
            if out.sent.kind != "evaluate":
                continue
            if out.error is not None:
                errors[key] = f"evaluation: client error: {out.error}"
            elif out.refused is not None:
                errors[key] = f"evaluation: refused: {out.refused}"
            else:
                scored.setdefault(out.sent.round, {})[out.sent.task] = out.content  # type: ignore[assignment]
        for r, per_task in sorted(scored.items()):
            self._record_evaluations(r, per_task, {})
        for r, t in sorted(self._eval_pending):  # what is still out failed, with its reply's error if any
            self._record_evaluations(r, {}, {t: errors.get((r, t), "evaluation: no reply before round-timeout")})
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
    def _check_stop(self, where: str) -> None:
        reason = self.stop_check() if self.stop_check is not None else None
        if reason:
            raise RunStopped(f"{where}: {clip_text(reason)}")

    def evaluate_round(self, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord | None = None,
                       timeout: float = 3600) -> MetricRecord | None:
        """One federated evaluation of ``arrays`` on every task (round 0 when evaluation does not ride with training)."""
        self._eval_started = time.perf_counter()
        msgs = self._configure_evaluate(server_round, arrays, config or ConfigRecord())
        replies = send_and_receive(grid, msgs, timeout=timeout, stop_check=self.stop_check)
        self._check_stop(f"stopped while evaluating round {server_round}")
        return self._aggregate_evaluate(server_round, replies)

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn=None) -> Result:
        """Evaluate the starting model on every task (round 0), then run ``num_rounds`` rounds.

        With ``evaluate_in_train`` the starting model is scored by round 1's train messages
        (on a resumed run: the checkpointed model, by the first resumed round). Otherwise
        round 0 is a separate evaluation, which a resumed run skips: the stopped run recorded it.
        ``evaluate_fn`` is not supported (evaluation is federated, per task).
        """
        if evaluate_fn is not None:
            raise ValueError("ATMStrategy evaluates on the clients; evaluate_fn is not supported")
        self._last_round = self.round_offset + num_rounds
        train_config = train_config or ConfigRecord()
        evaluate_config = evaluate_config or ConfigRecord()
        if "split" in evaluate_config:
            self._eval_split = str(evaluate_config["split"])
        self.summary()
        if self.round_offset == 0 and not self.evaluate_in_train:
            self.evaluate_round(grid, 0, initial_arrays, evaluate_config, timeout)
        elif self.round_offset:
            log.info("resuming after round %d: running rounds %d..%d", self.round_offset, self.round_offset + 1,
                     self.round_offset + num_rounds)
        result, arrays = Result(), initial_arrays
        for current in range(1, num_rounds + 1):
            self._check_stop(f"stopped before round {self.round_offset + current}")
            log.info("[ROUND %d/%d]", self.round_offset + current, self._last_round)
            replies = send_and_receive(grid, self.configure_train(current, arrays, train_config, grid),
                                       timeout=timeout, stop_check=self.stop_check)
            self._check_stop(f"stopped in round {self.round_offset + current}")
            arrays, metrics = self.aggregate_train(current, replies)
            result.arrays = arrays
            result.train_metrics_clientapp[current] = metrics
            msgs = list(self.configure_evaluate(current, arrays, evaluate_config, grid))
            replies = send_and_receive(grid, msgs, timeout=timeout, stop_check=self.stop_check) if msgs else []
            self._check_stop(f"stopped while evaluating round {self.round_offset + current}")
            evaluated = self.aggregate_evaluate(current, replies)
            if evaluated is not None:
                result.evaluate_metrics_clientapp[current] = evaluated
        return result

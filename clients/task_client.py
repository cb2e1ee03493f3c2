"""The task ClientApp: fine-tunes the broadcast base on its task and returns the task vector.

Which task a node serves:
* deployment: node config ``task=<name>`` (and optionally ``data-dir=<path>`` for the
  site's local copy), e.g. ``flower-supernode --node-config 'task="mnist" data-dir="/srv/mnist"'``
  (Flower parses the values as TOML: strings need double quotes; deploy/start-supernode.sh adds them);
* simulation: partition ``i`` of ``n`` serves the tasks at positions ``i, i+n, ...`` of
  run-config ``tasks`` (one task per node when ``num-supernodes`` equals the task count).

The server asks each node which tasks it serves (a ``query`` message) and addresses each
train/evaluate message to one task by name. A train message whose config has
``evaluate-split`` first scores the base it carries (the previous round's merged model)
and returns those metrics beside the task vector (run-config ``evaluate-in-train``).
With ``client-optimizer-state = carry`` the site keeps its optimiser's moments in its
node state (``context.state``) from one round to the next; they never leave the site.
"""

from __future__ import annotations

import logging
import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from atm_fl.compression import encode_upload, upload_seed
from atm_fl.config import RunConfig, parse_run_config
from atm_fl.logs import setup_logging
from atm_fl.runtime import get_task_runtime
from atm_fl.task_vector import Layout, record_views
from clients.parent_watch import exit_with_parent

log = logging.getLogger(__name__)
app = ClientApp()
exit_with_parent()  # only inside flwr-clientapp: exit when the SuperNode that started us dies


def node_tasks(cfg: RunConfig, node_config) -> list[str]:
    if "task" in node_config:
        return [str(node_config["task"])]
    if "partition-id" in node_config:
        pid, n = int(node_config["partition-id"]), int(node_config["num-partitions"])
        return [t for i, t in enumerate(cfg.task_list) if i % n == pid]
    raise ValueError("this node has no task: start the SuperNode with --node-config 'task=\"<name>\"' "
                     "(and data-dir=<path> for local data).")


def _resolve(msg: Message, context: Context) -> tuple[RunConfig, str, str | None]:
    setup_logging()
    cfg = parse_run_config(context.run_config)
    task = str(msg.content["config"]["task"])
    served = node_tasks(cfg, context.node_config)
    if task not in served:
        raise ValueError(f"the server asked this node for task {task!r}, but it serves {served}")
    data_dir = context.node_config.get("data-dir") or None
    return cfg, task, (str(data_dir) if data_dir else None)


@app.query()
def query(msg: Message, context: Context) -> Message:
    cfg = parse_run_config(context.run_config)
    tasks = node_tasks(cfg, context.node_config)
    return Message(RecordDict({"info": ConfigRecord({"tasks": ",".join(tasks)})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, task, data_dir = _resolve(msg, context)
    server_round = int(msg.content["config"]["server-round"])
    runtime = get_task_runtime(cfg, task, data_dir)
    base = record_views(msg.content["arrays"])  # read in place: load_state_dict copies into the model
    content, info = {}, {"task": task}
    split = msg.content["config"].get("evaluate-split")
    if split:
        # Score the received base (the previous round's model) before fine-tuning it. A failed
        # evaluation is reported, not raised: the task vector is still worth sending.
        try:
            content["evaluation"] = MetricRecord(_timed_evaluate(runtime, base, str(split)))
        except Exception as exc:  # noqa: BLE001
            log.exception("[%s r%d] evaluation of the received model failed", task, server_round)
            info["evaluation-error"] = f"{type(exc).__name__}: {exc}"
    carried = _carried_state(context, task) if cfg.client_optimizer_state == "carry" else None
    tv, metrics = runtime.train_round(base, server_round, optimizer_state=carried)
    if carried is not None:
        # Node state lives on the site for the run (the SuperNode keeps it between messages); never sent.
        context.state[_STATE_KEY] = ArrayRecord(carried)
        context.state[_STATE_META] = ConfigRecord({"task": task, "round": server_round})
    arrays, encoding = encode_upload(tv, Layout.of(tv, runtime.keys), cfg.upload_compression, cfg.upload_density,
                                     cfg.upload_values, upload_seed(cfg.seed, server_round, task))
    info["encoding"] = encoding
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics),
                               "info": ConfigRecord(info), **content}), reply_to=msg)


_STATE_KEY, _STATE_META = "client-optimizer", "client-optimizer-meta"


def _carried_state(context: Context, task: str) -> dict:
    """This site's optimiser state from its previous round of ``task`` ({} before the first)."""
    meta = context.state.config_records.get(_STATE_META)
    if meta is None or str(meta.get("task")) != task or _STATE_KEY not in context.state.array_records:
        return {}
    return context.state.array_records[_STATE_KEY].to_torch_state_dict()


def _timed_evaluate(runtime, state, split: str) -> dict[str, float]:
    t0 = time.perf_counter()
    metrics = runtime.evaluate(state, split)
    metrics["seconds"] = time.perf_counter() - t0
    return metrics


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, task, data_dir = _resolve(msg, context)
    runtime = get_task_runtime(cfg, task, data_dir)
    split = str(msg.content["config"].get("split", "test"))
    metrics = _timed_evaluate(runtime, record_views(msg.content["arrays"]), split)
    # Echo the round whose model was scored: one evaluate phase may score two rounds' models.
    info = {"task": task, "server-round": int(msg.content["config"]["server-round"])}
    return Message(RecordDict({"metrics": MetricRecord(metrics), "info": ConfigRecord(info)}), reply_to=msg)

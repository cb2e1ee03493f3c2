"""Task discovery: which node serves which task (asked once, before the first round)."""

from __future__ import annotations

import logging
import time

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

log = logging.getLogger(__name__)


def discover_tasks(grid: Grid, tasks: list[str], timeout: float, poll: float = 1.0) -> dict[str, int]:
    """Ask every node which tasks it serves until each task has a node; task -> node id.

    Raises ``RuntimeError`` naming the missing tasks when ``timeout`` passes first.
    """
    deadline = time.monotonic() + timeout
    asked: set[int] = set()
    serving: dict[str, int] = {}
    while True:
        new = [n for n in grid.get_node_ids() if n not in asked]
        if new:
            msgs = [Message(RecordDict({"config": ConfigRecord({})}), message_type=MessageType.QUERY, dst_node_id=n)
                    for n in new]
            for reply in grid.send_and_receive(msgs, timeout=max(1.0, deadline - time.monotonic())):
                node = reply.metadata.src_node_id
                if reply.has_error():
                    log.warning("node %d did not say which task it serves: %s", node, reply.error.reason)
                    continue
                for task in filter(None, str(reply.content["info"]["tasks"]).split(",")):
                    if task not in tasks:
                        log.warning("node %d serves task %r, which is not in run-config 'tasks'; ignored", node, task)
                    elif task in serving:
                        log.warning("task %r is served by nodes %d and %d; using %d", task, serving[task], node,
                                    serving[task])
                    else:
                        serving[task] = node
            asked.update(new)
        missing = [t for t in tasks if t not in serving]
        if not missing:
            return {t: serving[t] for t in tasks}
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"no node serves task(s) {', '.join(missing)} after {timeout:g}s ({len(asked)} node(s) answered). "
                "In simulation use --federation-config \"num-supernodes=N\" with N >= 1; in deployment start a "
                "SuperNode with --node-config 'task=\"<name>\"' for each task (deploy/start-supernode.sh --task), "
                "or raise discovery-timeout.")
        time.sleep(poll)

"""Task discovery: which node serves which task (asked before the first round, and again for replaced nodes)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

log = logging.getLogger(__name__)


def ask_tasks(grid: Grid, nodes: Iterable[int], timeout: float) -> dict[int, list[str]]:
    """Ask each of ``nodes`` which tasks it serves; node id -> tasks, for the nodes that answered in time."""
    msgs = [Message(RecordDict({"config": ConfigRecord({})}), message_type=MessageType.QUERY, dst_node_id=n)
            for n in nodes]
    if not msgs:
        return {}
    answers: dict[int, list[str]] = {}
    for reply in grid.send_and_receive(msgs, timeout=max(1.0, timeout)):
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("node %d did not say which task it serves: %s", node, reply.error.reason)
            continue
        answers[node] = [t for t in str(reply.content["info"]["tasks"]).split(",") if t]
    return answers


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
            for node, served in ask_tasks(grid, new, deadline - time.monotonic()).items():
                for task in served:
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


class Rediscovery:
    """For tasks whose node failed: wait a little for it to come back, and find replacement nodes.

    ``rediscover(tasks) -> {task: new node id}``. A SuperNode restarted with its
    registered key (node authentication) keeps its node id: nothing has to be found, but
    it can only rejoin once the SuperLink has marked its dead predecessor offline, which
    is also when the server learns of the failure. ``wait`` lets the next round wait for
    it instead of failing that task once more. Without node authentication, a restarted
    SuperNode registers a fresh key and comes back under a new node id. Only online nodes
    not heard from before are asked, once each (a node that did not answer in time is
    asked again on a later call), so a call with no new node sends no message.

    Parameters
    ----------
    grid : Grid
        The run's grid.
    task_nodes : dict[str, int]
        Task -> node id, as discovery found them. Kept up to date with the replacements
        this object returns.
    timeout : float (default: 10.0)
        Seconds to wait for the new nodes' answers, per call.
    wait : float (default: 0.0)
        Seconds a call may wait for each asked task's node to be online again (or for a
        replacement to answer). 0 does not wait.
    poll : float (default: 2.0)
        Seconds between looks at the online nodes while waiting.
    """

    def __init__(self, grid: Grid, task_nodes: dict[str, int], timeout: float = 10.0, wait: float = 0.0,
                 poll: float = 2.0):
        self.grid, self.timeout, self.wait, self.poll = grid, timeout, wait, poll
        self.task_nodes = dict(task_nodes)
        self.served: dict[int, list[str]] = {int(n): [] for n in task_nodes.values()}  # node -> tasks it serves

    def __call__(self, tasks: Iterable[str]) -> dict[str, int]:
        wanted = list(tasks)
        deadline = time.monotonic() + self.wait
        found: dict[str, int] = {}
        while True:
            online = set(self.grid.get_node_ids())
            self._ask_new(online)
            # The most recently answering node wins: it is the latest replacement.
            for node, served in self.served.items():
                for task in served if node in online else ():
                    if task in wanted and node != self.task_nodes.get(task):
                        found[task] = self.task_nodes[task] = node
            missing = [t for t in wanted if self.task_nodes.get(t) not in online]
            if not missing or time.monotonic() >= deadline:
                if missing and self.wait > 0:
                    log.info("rediscovery: no online node for task(s) %s after %gs", ", ".join(missing), self.wait)
                return found
            time.sleep(min(self.poll, max(0.0, deadline - time.monotonic())))

    def _ask_new(self, online: set[int]) -> None:
        new = [n for n in online if n not in self.served]
        if not new:
            return
        answers = ask_tasks(self.grid, new, self.timeout)
        self.served.update(answers)
        silent = [n for n in new if n not in answers]
        if silent:
            log.info("rediscovery: node(s) %s did not answer within %gs; they are asked again next time",
                     ", ".join(map(str, silent)), self.timeout)

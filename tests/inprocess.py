"""An in-process Flower Grid for fast, Ray-free tests of the real ServerApp, strategy and ClientApp.

Each pushed message is handed straight to the ClientApp with the node's Context; an
exception becomes an error reply, as in Flower's runtimes. ``faults`` lets a test
replace a node's reply (crash, silence, a late reply, poisoned vector) to check the
server's answer. A ``Late(seconds, reply)`` arrives after ``seconds`` of simulated time:
``send_and_receive`` drops it when that exceeds its ``timeout`` (the server's
``round-timeout``), as a real Grid would, without the test waiting.
Building Messages outside a Flower runtime needs ``TaskIdentity`` set: an internal API,
isolated here (``flower_identity``).
"""

from __future__ import annotations

import itertools
import traceback
from collections.abc import Callable, Iterable
from contextlib import contextmanager

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

SILENT = object()  # a fault that drops the reply (a client that never answers)


class Late:
    """A fault result: ``reply`` arrives ``seconds`` after the message was sent (simulated)."""

    def __init__(self, seconds: float, reply: Message):
        self.seconds, self.reply = seconds, reply


@contextmanager
def flower_identity(run_id: int = 1, node_id: int = 0, task_id: int = 1):
    from flwr.supercore.task_identity import TaskIdentity

    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, node_id, task_id
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


class InProcessGrid(Grid):
    """Simulated nodes 1..n with partition-id node configs, or explicit node configs."""

    def __init__(self, client_app, run_config: dict, num_nodes: int | None = None,
                 node_configs: list[dict] | None = None,
                 faults: dict[int, Callable[[Message, Message], Message | object]] | None = None):
        if node_configs is None:
            node_configs = [{"partition-id": i, "num-partitions": num_nodes} for i in range(num_nodes)]
        self.client_app = client_app
        self.contexts = {i + 1: Context(run_id=1, node_id=i + 1, node_config=nc, state=RecordDict(),
                                        run_config=dict(run_config))
                         for i, nc in enumerate(node_configs)}
        self.faults = dict(faults or {})
        self._ids = itertools.count(1)
        self._replies: dict[str, Message] = {}
        self._delays: dict[str, float] = {}
        self.sent: list[Message] = []
        self.timeouts: list[float | None] = []  # the timeout of every send_and_receive call

    def set_run(self, run) -> None:  # pragma: no cover - not used by the ServerApp
        pass

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # pragma: no cover
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = mid
            self.sent.append(msg)
            try:
                reply = self.client_app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # noqa: BLE001 - a crashed client is an error reply
                reply = Message(Error(code=1, reason=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"),
                                reply_to=msg)
            fault = self.faults.get(msg.metadata.dst_node_id)
            if fault is not None:
                reply = fault(msg, reply)
            if isinstance(reply, Late):
                self._delays[mid], reply = reply.seconds, reply.reply
            if reply is not SILENT:
                self._replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(m) for m in message_ids if m in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        self.timeouts.append(timeout)
        ids = list(self.push_messages(messages))
        for mid in ids:  # a reply later than the timeout is never seen
            if timeout is not None and self._delays.pop(mid, 0.0) > timeout:
                self._replies.pop(mid, None)
        return self.pull_messages(ids)

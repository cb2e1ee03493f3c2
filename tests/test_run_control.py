"""strategies/run_control.py: stop requests from signals and from Flower's exit, and the stop-aware wait for replies.

The wait loop runs here against a scripted grid (replies arrive after a given number of
polls; node activation times can change), so nothing waits for real time beyond a few
10 ms polls. The signal tests send real signals to this process, and the Flower exit
hook is driven through Flower's own exit-handler list.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo

from strategies import run_control
from strategies.run_control import NODE_UNAVAILABLE, send_and_receive, stop_on_signals, stop_requested


class ScriptedGrid:
    """A grid whose node ``n`` answers after ``delays[n]`` polls (never if absent); activations can change."""

    def __init__(self, delays: dict[int, int], activated: dict[int, str] | None = None,
                 fail_pull: Exception | None = None):
        self.delays, self.activated, self.fail_pull = delays, dict(activated or {}), fail_pull
        self.polls = 0
        self.sent: dict[str, Message] = {}
        self.on_poll = None  # called with the poll count before each pull

    def get_node_ids(self):
        return list(self.activated)

    def get_nodes(self):
        return [NodeInfo(node_id=n, last_activated_at=a) for n, a in self.activated.items()]

    def push_messages(self, messages):
        ids = []
        for i, msg in enumerate(messages):
            mid = f"m{len(self.sent) + i}"
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
        self.sent.update(zip(ids, messages))
        return ids

    def pull_messages(self, message_ids):
        self.polls += 1
        if self.on_poll is not None:
            self.on_poll(self.polls)
        if self.fail_pull is not None:
            raise self.fail_pull
        out = []
        for mid in message_ids:
            msg = self.sent[mid]
            due = self.delays.get(msg.metadata.dst_node_id)
            if due is not None and self.polls >= due:
                out.append(Message(RecordDict({"info": ConfigRecord({"node": msg.metadata.dst_node_id})}),
                                   reply_to=msg))
        return out

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - must not be used
        raise AssertionError("the scripted grid is waited on by run_control.send_and_receive itself")


def messages(*nodes):
    return [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type="query") for n in nodes]


@pytest.fixture
def clean_stop():
    run_control._state.reset()
    yield
    run_control._state.reset()


def wait(grid, msgs, **kw):
    kw.setdefault("timeout", 60.0)
    kw.setdefault("poll", 0.01)
    return send_and_receive(grid, msgs, own_loop=True, **kw)


def test_all_replies_arrive(identity, clean_stop):
    grid = ScriptedGrid({1: 1, 2: 3}, {1: "t0", 2: "t0"})
    replies = wait(grid, messages(1, 2))
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2] and not any(r.has_error() for r in replies)
    assert grid.polls == 3


def test_a_restarted_node_gets_an_error_reply_instead_of_a_wait_for_the_timeout(identity, clean_stop):
    # Node 2 took its message and was killed; it came back (same node id) with a new activation
    # time before the server polled while it was offline.
    grid = ScriptedGrid({1: 1}, {1: "t0", 2: "t0"})
    grid.on_poll = lambda n: grid.activated.update({2: "t1"}) if n == 3 else None
    msgs = messages(1, 2)
    replies = wait(grid, msgs)
    assert grid.polls == 3  # not the 6000 polls of the 60 s timeout
    err = next(r for r in replies if r.has_error())
    assert err.error.code == NODE_UNAVAILABLE and "restarted" in err.error.reason and "t1" in err.error.reason
    assert err.metadata.reply_to_message_id == msgs[1].metadata.message_id
    assert err.metadata.src_node_id == 2


def test_nodes_without_activation_times_are_just_waited_for(identity, clean_stop):
    grid = ScriptedGrid({}, {1: "", 2: ""})
    assert wait(grid, messages(1, 2), timeout=0.05) == []
    assert grid.polls >= 2


def test_a_stop_request_ends_the_wait_with_the_replies_so_far(identity, clean_stop):
    grid = ScriptedGrid({1: 1}, {1: "t0", 2: "t0"})
    grid.on_poll = lambda n: run_control.request_stop("operator said so") if n == 2 else None
    replies = wait(grid, messages(1, 2))
    assert [r.metadata.src_node_id for r in replies] == [1] and grid.polls == 2
    assert stop_requested() == "operator said so"


def test_a_refused_call_is_a_stop_and_other_errors_propagate(identity, clean_stop):
    request = httpx.Request("POST", "http://127.0.0.1/v1/runtime/pull-messages")
    refused = httpx.HTTPStatusError("401", request=request, response=httpx.Response(401, request=request))
    assert wait(ScriptedGrid({}, {1: "t0"}, fail_pull=refused), messages(1)) == []
    assert "HTTP 401" in stop_requested()
    run_control._state.reset()
    with pytest.raises(ValueError, match="disk"):
        wait(ScriptedGrid({}, {1: "t0"}, fail_pull=ValueError("disk")), messages(1))
    assert stop_requested() is None


def test_a_grid_from_outside_flower_keeps_its_own_wait(identity, clean_stop):
    from clients.task_client import app as client_app
    from tests.conftest import small_config
    from tests.inprocess import InProcessGrid

    grid = InProcessGrid(client_app, small_config("/tmp"), num_nodes=1)
    replies = send_and_receive(grid, messages(1), timeout=12.5)
    assert grid.timeouts == [12.5] and len(replies) == 1


def test_signals_request_a_stop_and_a_second_one_runs_the_previous_handler(clean_stop):
    calls = []
    old = signal.signal(signal.SIGINT, lambda s, f: calls.append(s))
    try:
        with stop_on_signals(grace=60):
            os.kill(os.getpid(), signal.SIGTERM)  # would end pytest without the block
            time.sleep(0.01)
            assert "SIGTERM" in stop_requested()
            os.kill(os.getpid(), signal.SIGINT)  # a second signal: the previous handler runs
            time.sleep(0.01)
            assert calls == [signal.SIGINT]
        # The block restored the handlers it replaced.
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert calls == [signal.SIGINT, signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, old)


def test_a_run_that_does_not_stop_within_the_grace_gets_the_previous_handler(clean_stop):
    calls = []
    old = signal.signal(signal.SIGINT, lambda s, f: calls.append(s))
    try:
        with stop_on_signals(grace=0.05):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(500):  # the handler runs in this thread, between these sleeps
                if calls:
                    break
                time.sleep(0.01)
            assert calls == [signal.SIGINT] and "SIGINT" in stop_requested()
    finally:
        signal.signal(signal.SIGINT, old)


def test_in_a_worker_thread_flowers_exit_requests_the_stop_and_waits_for_the_run(clean_stop):
    # flwr-simulation runs the ServerApp in a thread; its main thread calls Flower's exit handlers.
    from flwr.supercore.exit.exit_handler import trigger_exit_handlers

    seen = []
    entered = threading.Event()

    def server_app():
        with stop_on_signals(grace=30):
            entered.set()
            while not stop_requested():
                time.sleep(0.01)
            seen.append(stop_requested())
            time.sleep(0.05)  # writing results.json

    worker = threading.Thread(target=server_app)
    worker.start()
    entered.wait(10)
    trigger_exit_handlers(run_before_force_exit=True)  # returns once the block has ended
    worker.join(10)
    assert not worker.is_alive()
    assert seen and "Flower is exiting" in seen[0]


def test_a_worker_thread_notices_that_the_main_thread_has_ended(tmp_path):
    script = textwrap.dedent("""
        import sys, threading, time
        sys.path.insert(0, sys.argv[1])
        from strategies.run_control import stop_requested

        def worker():
            for _ in range(1000):
                reason = stop_requested()
                if reason:
                    print("stopped:", reason, flush=True)
                    return
                time.sleep(0.01)
            print("never noticed", flush=True)

        threading.Thread(target=worker).start()
        time.sleep(0.1)
        # the main thread ends here; the interpreter waits for the worker
    """)
    out = subprocess.run([sys.executable, "-c", script, str(os.getcwd())], capture_output=True, text=True, timeout=60)
    assert "stopped: the Flower process is exiting" in out.stdout, out.stdout + out.stderr

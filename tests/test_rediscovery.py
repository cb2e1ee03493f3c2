"""strategies/discovery.py ``Rediscovery``: a site that comes back under a new node id is found again.

The in-process grid runs the real ClientApp's query handler: a node answers with the task
its node config names, as a SuperNode started with ``--node-config 'task="..."'`` does.
"""

from __future__ import annotations

from flwr.app import Context, RecordDict

from clients.task_client import app as client_app
from strategies.discovery import Rediscovery, discover_tasks
from tests.conftest import small_config
from tests.inprocess import SILENT, InProcessGrid


def site_grid(tmp_path, **faults):
    raw = small_config(tmp_path, tasks="mnist,optdigits")
    return InProcessGrid(client_app, raw, node_configs=[{"task": "mnist"}, {"task": "optdigits"}], faults=faults), raw


def add_node(grid, raw, node_id, task):
    grid.contexts[node_id] = Context(run_id=1, node_id=node_id, node_config={"task": task}, state=RecordDict(),
                                     run_config=dict(raw))


def queries(grid):
    return [m.metadata.dst_node_id for m in grid.sent if m.metadata.message_type == "query"]


def test_a_replacement_node_is_found_by_asking_only_new_nodes(tmp_path, identity):
    grid, raw = site_grid(tmp_path)
    task_nodes = discover_tasks(grid, ["mnist", "optdigits"], timeout=5)
    assert task_nodes == {"mnist": 1, "optdigits": 2} and sorted(queries(grid)) == [1, 2]
    rediscover = Rediscovery(grid, task_nodes, timeout=5)

    # Same node ids (node authentication): nothing new, nothing sent.
    assert rediscover(["mnist"]) == {} and len(queries(grid)) == 2

    # The mnist site restarted without node authentication: node 1 is gone, node 7 serves mnist.
    del grid.contexts[1]
    add_node(grid, raw, 7, "mnist")
    assert rediscover(["mnist"]) == {"mnist": 7}
    assert queries(grid)[2:] == [7]
    # Node 7 is known now (asked once) and already the task's node: nothing moves.
    assert rediscover(["mnist"]) == {} and queries(grid)[2:] == [7]
    # A task whose node did not fail is not moved, even if a new node also serves it.
    assert rediscover(["optdigits"]) == {}


def test_a_silent_new_node_is_asked_again_and_an_offline_one_is_not_used(tmp_path, identity):
    grid, raw = site_grid(tmp_path)
    grid.faults[8] = lambda msg, reply: SILENT
    rediscover = Rediscovery(grid, {"mnist": 1, "optdigits": 2}, timeout=1)
    add_node(grid, raw, 8, "mnist")
    assert rediscover(["mnist"]) == {}
    del grid.faults[8]
    assert rediscover(["mnist"]) == {"mnist": 8} and queries(grid) == [8, 8]
    # Node 8 went offline again: it is not offered as the task's node.
    del grid.contexts[8]
    assert rediscover(["mnist"]) == {}


def test_waiting_for_a_failed_node_to_come_back(tmp_path, identity):
    # With node authentication a restarted site keeps its node id: the next round can wait for it.
    grid, raw = site_grid(tmp_path)
    mnist_context = grid.contexts.pop(1)  # node 1 is offline
    looks = []

    def get_node_ids():
        looks.append(1)
        if len(looks) == 3:  # back online at the third look
            grid.contexts[1] = mnist_context
        return list(grid.contexts)

    grid.get_node_ids = get_node_ids
    rediscover = Rediscovery(grid, {"mnist": 1, "optdigits": 2}, timeout=1, wait=60, poll=0.01)
    assert rediscover(["mnist"]) == {} and len(looks) == 3 and queries(grid) == []
    # Without a wait, one look and no waiting.
    del grid.contexts[1]
    looks.clear()
    assert Rediscovery(grid, {"mnist": 1, "optdigits": 2}, timeout=1)(["mnist"]) == {} and len(looks) == 1

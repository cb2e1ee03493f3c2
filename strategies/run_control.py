"""Stopping a run cleanly, and waiting for replies without missing a stop or a restarted node.

A run is stopped from outside in one of these ways, and the ServerApp process sees each
one differently:

* ``flwr stop RUN_ID`` (also what Ctrl-C on ``atm-fl run`` sends). The SuperLink marks
  the run ``finished:stopped`` and revokes the ServerApp's token. Flower's task heartbeat
  thread then raises SIGINT in the ServerApp process, and the next Runtime API call
  fails with HTTP 401 (Flower's retry code raises SIGINT as well).
* SIGTERM / SIGINT sent to the ServerApp process (the SuperLink or its SuperExec shutting
  down, an operator, Flower's parent-process monitor).
* In simulation, the ServerApp runs in a worker thread of ``flwr-simulation``. Signals
  reach that process's main thread, and Flower's handler exits the process (a forced
  exit after 5 s).

Flower's own handler ends the process at once. The ServerApp then dies in the middle of
whatever it was doing, and ``results.json`` calls the run failed. :func:`stop_on_signals`
turns all three into a *stop request* that the strategy reads with :func:`stop_requested`,
between phases and, through :func:`send_and_receive`, every few seconds while it waits
for replies. The strategy then ends the run as ``stopped``, with every finished round kept.
If the run has not ended ``grace`` seconds after the request, Flower's own handler runs
after all. A second signal also runs it at once.

:func:`send_and_receive` is a drop-in for ``grid.send_and_receive`` that also notices a
*restarted* SuperNode. A node killed after it took a message never answers it. While the
SuperLink counts the node offline, it answers that message with a "Node Unavailable"
error. A node restarted with the same key comes back under the same node id, though. If
the server does not poll while the node is offline, that error never comes, and the round
would wait for ``round-timeout``. So when a node's activation time changes while messages
to it are outstanding, those messages get the error Flower would have given.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from flwr.app import Error, Message
from flwr.serverapp import Grid

log = logging.getLogger(__name__)

# Flower's ErrorCode.NODE_UNAVAILABLE (flwr.common.constant): the code the SuperLink uses
# for messages to a node that stopped sending heartbeats.
NODE_UNAVAILABLE = 5
# Flower's HTTP grid polls for replies every 3 s; so does this one on that grid.
DEFAULT_POLL = 3.0


class _StopState:
    """The process-wide stop request (one ServerApp run per process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reason: str | None = None
        self.ended = threading.Event()  # set when the guarded run has returned or raised

    def request(self, reason: str) -> bool:
        """Record ``reason`` unless a stop was already requested; True if this call recorded it."""
        with self.lock:
            if self.reason is not None:
                return False
            self.reason = reason
        log.warning("stop requested: %s", reason)
        return True

    def reset(self) -> None:
        with self.lock:
            self.reason = None
        self.ended.clear()


_state = _StopState()


def request_stop(reason: str) -> None:
    """Ask the running ServerApp to stop at its next check, giving ``reason``."""
    _state.request(reason)


def stop_requested(grid: Grid | None = None) -> str | None:
    """Why the run should stop now, or ``None``. It only reads a flag, so it is cheap.

    The flag is set by the signal handlers of :func:`stop_on_signals`, by
    :func:`send_and_receive` when the SuperLink refuses the run's calls (a run stopped
    with ``flwr stop``), and by :func:`request_stop`. Called from a thread other than the
    main one (the ServerApp thread of ``flwr-simulation``), it also reports a process whose
    main thread has ended: Flower is exiting that process. ``grid`` is accepted so that
    callers can pass it, but it is not used: asking the SuperLink about the run costs
    an HTTP call, and a stopped run already shows up at the next poll.
    """
    del grid
    if _state.reason is None and threading.current_thread() is not threading.main_thread() \
            and not threading.main_thread().is_alive():
        _state.request("the Flower process is exiting (its main thread has ended)")
    return _state.reason


@contextmanager
def stop_on_signals(grace: float = 30.0) -> Iterator[None]:
    """Within this block, SIGINT/SIGTERM (and Flower's exit) request a stop instead of ending the process.

    Parameters
    ----------
    grace : float (default: 30.0)
        Seconds the run gets to end by itself after a stop request. After that, or on a
        second signal, the handler that was installed before (Flower's graceful exit)
        runs.

    In the main thread (``flwr-serverapp``, where the ServerApp runs in the main thread)
    it replaces the SIGINT and SIGTERM handlers for the duration of the block. In another
    thread (``flwr-simulation``), signal handlers cannot be installed: it registers with
    Flower's exit handlers instead. The first of those runs before Flower's forced-exit
    timer starts, and there it requests the stop and waits up to ``grace`` seconds for the
    block to end. When this Flower-internal hook is missing, :func:`stop_requested` still
    notices the exit, once the main thread has ended. On entry any earlier stop request is
    cleared.
    """
    _state.reset()
    if threading.current_thread() is threading.main_thread():
        restore = _install_signal_handlers(grace)
    else:
        restore = _register_flower_exit_hook(grace)
    try:
        yield
    finally:
        _state.ended.set()
        restore()


def _install_signal_handlers(grace: float) -> Callable[[], None]:
    previous: dict[int, object] = {}
    escalated = threading.Event()

    def run_previous(signum: int, frame) -> None:
        prev = previous.get(signum)
        if callable(prev):
            prev(signum, frame)
        elif prev == signal.SIG_DFL:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def handler(signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if escalated.is_set() or not _state.request(f"{name} received by the ServerApp process "
                                                    "(flwr stop, Ctrl-C on atm-fl run, or a shutdown)"):
            # A second signal, or the grace period is over: do what would have happened.
            log.warning("%s: the run did not stop by itself; exiting the ServerApp process", name)
            run_previous(signum, frame)
            return

        def escalate() -> None:
            if not _state.ended.wait(grace):
                escalated.set()
                signal.raise_signal(signum)  # runs ``handler`` again, in the main thread

        threading.Thread(target=escalate, name="stop-grace", daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, prev in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, prev)

    return restore


def _register_flower_exit_hook(grace: float) -> Callable[[], None]:
    try:
        # Flower-internal (1.41/1.42): handlers that run at the start of flwr_exit, in the
        # main thread, before the 5 s forced-exit timer starts.
        from flwr.supercore.exit import add_exit_handler
    except ImportError:  # pragma: no cover - depends on the Flower version
        log.info("no Flower exit hook in this Flower version: a stop is noticed when the main thread ends")
        return lambda: None
    active = threading.Event()
    active.set()

    def on_flower_exit() -> None:
        if active.is_set() and _state.request("Flower is exiting the simulation process (flwr stop, "
                                              "Ctrl-C on atm-fl run, or a shutdown)"):
            _state.ended.wait(grace)

    try:
        add_exit_handler(on_flower_exit, run_before_force_exit=True)
    except TypeError:  # pragma: no cover - older signature without the phase
        add_exit_handler(on_flower_exit)
    # Flower keeps the handler until it exits; once the block is over it does nothing.
    return active.clear


def _is_refusal(exc: BaseException) -> str | None:
    """The SuperLink's refusal of a stopped run's call, as a reason; None for other errors."""
    if type(exc).__name__ == "RunNotRunningException":
        return "the SuperLink says the run is no longer running"
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    if code in (401, 403):
        return f"the SuperLink refused the run's request (HTTP {code}): the run was stopped or its task ended"
    return None


def _activations(grid: Grid, nodes: Iterable[int]) -> dict[int, str]:
    """node id -> the SuperLink's ``last_activated_at`` for those of ``nodes`` that report one."""
    want = set(nodes)
    try:
        infos = list(grid.get_nodes())
    except Exception as exc:  # noqa: BLE001 - a grid without node info: no restart detection
        log.debug("get_nodes failed (%s): restarted nodes are not detected", exc)
        return {}
    return {int(n.node_id): str(n.last_activated_at) for n in infos
            if int(n.node_id) in want and getattr(n, "last_activated_at", "")}


def send_and_receive(grid: Grid, messages: Iterable[Message], *, timeout: float | None,
                     stop_check: Callable[[], str | None] | None = None,
                     poll: float | None = None, own_loop: bool | None = None) -> list[Message]:
    """Push ``messages`` and collect their replies, like ``grid.send_and_receive``, stopping early on a stop request.

    Parameters
    ----------
    grid : Grid
        The run's grid.
    messages : iterable of Message
        The messages to send.
    timeout : float or None
        Seconds to wait for all replies; ``None`` waits until every message is answered.
    stop_check : callable, optional
        ``stop_check() -> reason | None``, asked at every poll (default:
        :func:`stop_requested`). A reason ends the wait.
    poll : float, optional
        Seconds between polls. Default: the grid's own ``pull_interval`` (Flower's
        simulation grid has one), else 3 s, as Flower's HTTP grid waits.
    own_loop : bool, optional
        Wait here (True) or leave it to ``grid.send_and_receive`` (False). Default: here
        for Flower's grids (HTTP and simulation), there for any other grid, such as the
        in-process test grid, which simulates time in its own ``send_and_receive``.

    Returns
    -------
    list of Message
        The replies received, and an error reply (code 5, node unavailable) for each
        message whose node was activated again while the message was outstanding. When a
        stop is requested or the SuperLink refuses the run's calls, it returns the replies
        so far: the caller checks :func:`stop_requested` next and ends the run.
    """
    if own_loop is None:
        own_loop = type(grid).__module__.startswith("flwr.")
    if not own_loop:
        # A grid from outside Flower (tests/inprocess.py) may simulate time in its own
        # send_and_receive: keep its semantics.
        return list(grid.send_and_receive(messages, timeout=timeout))
    check = stop_check or stop_requested
    if poll is None:
        poll = float(getattr(grid, "pull_interval", DEFAULT_POLL))
    messages = list(messages)
    try:
        ids = list(grid.push_messages(messages))
    except BaseException as exc:
        reason = _is_refusal(exc)
        if reason is None:
            raise
        request_stop(reason)
        return []
    # Flower puts None where a message could not be pushed; like Flower's wait, skip those.
    pending = {str(mid): m for mid, m in zip(ids, messages) if mid}
    targets = {m.metadata.dst_node_id for m in pending.values()}
    # Read after the push: a node activated later than this has restarted since.
    activated = _activations(grid, targets)
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while True:
        try:
            got = list(grid.pull_messages(list(pending)))
        except BaseException as exc:
            reason = _is_refusal(exc)
            if reason is None:
                raise
            request_stop(reason)
            return replies
        replies.extend(got)
        for reply in got:
            pending.pop(str(reply.metadata.reply_to_message_id), None)
        if not pending:
            return replies
        if activated:
            now = _activations(grid, {m.metadata.dst_node_id for m in pending.values()})
            for mid, msg in list(pending.items()):
                node = msg.metadata.dst_node_id
                if node in now and node in activated and now[node] != activated[node]:
                    log.warning("node %d was activated again at %s (before: %s) while message %s was outstanding: "
                                "it restarted and will not answer it", node, now[node], activated[node], mid)
                    replies.append(Message(Error(NODE_UNAVAILABLE, f"Node restarted: node {node} was activated "
                                                 f"again at {now[node]} while this message was outstanding; the "
                                                 "process that had it is gone"), reply_to=msg))
                    del pending[mid]
            if not pending:
                return replies
        reason = check()
        if reason:
            log.warning("stopped waiting for %d repl%s: %s", len(pending), "y" if len(pending) == 1 else "ies",
                        reason)
            return replies
        if deadline is not None and time.monotonic() >= deadline:
            return replies
        wait = poll if deadline is None else min(poll, max(0.0, deadline - time.monotonic()))
        time.sleep(wait)

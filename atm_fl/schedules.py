"""The server learning rate of each round: run-config ``alpha`` under ``alpha-schedule``."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


def alpha_at(alpha: float, schedule: str, end_factor: float, server_round: int, num_rounds: int) -> float:
    """``alpha * f(p)`` for global round ``server_round`` (1-based) of ``num_rounds``, p = (round - 1) / num_rounds.

    ``constant``: f = 1. ``linear``: f = 1 - (1 - end_factor) p. ``cosine``: f = end_factor +
    (1 - end_factor)(1 + cos(pi p)) / 2. Round 1 always gets ``alpha``, and p stays below 1,
    so the last round still moves the model (a schedule that reached 0 would waste it).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"run-config key 'alpha-schedule' = {schedule!r}; choose one of: {', '.join(SCHEDULES)}.")
    if not 1 <= server_round <= num_rounds:
        raise ValueError(f"round {server_round} is outside 1..{num_rounds}")
    p = (server_round - 1) / num_rounds
    if schedule == "linear":
        return alpha * (1.0 - (1.0 - end_factor) * p)
    if schedule == "cosine":
        return alpha * (end_factor + (1.0 - end_factor) * (1.0 + math.cos(math.pi * p)) / 2.0)
    return alpha

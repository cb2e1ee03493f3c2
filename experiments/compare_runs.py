"""Did two runs compute the same thing? The first round where their results.json differ, and how.

    python -m experiments.compare_runs runs/a/results.json runs/b/results.json

Round by round it compares everything a run measures except time: per-task evaluation
metrics, per-task training loss and update norm, the server's norms and step, bytes, refusals
and failures, then the settings and the final summary. Left out: timings (any key with
``seconds``), which differ between any two runs; where a run writes (``output-dir``,
``run-name``); the average accuracy, which is derived from the per-task accuracies compared
(older runs summed it in the order the replies came in); and that order itself. The first difference
usually says where two runs parted: at a client's training (``train``) or at the server's
merge (``server``), and in which round. Exit status 0 if the runs agree to the bit, 1 if
not, 2 if a file cannot be read.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("experiments.compare_runs")


SKIPPED = {"output-dir", "run-name", "average_accuracy"}


def differences(a: Any, b: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(path, a's value, b's value)`` for every leaf that differs; timings and ``SKIPPED`` keys left out."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if "seconds" in str(k) or k in SKIPPED:
                continue
            yield from differences(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f"{path}[{i}]")
    elif a != b:
        yield path, a, b


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Every difference, round by round (rounds matched by number), then the config and the final summary."""
    out: list[tuple[str, Any, Any]] = []
    ra = {r["round"]: r for r in a.get("rounds", [])}
    rb = {r["round"]: r for r in b.get("rounds", [])}
    for n in sorted(set(ra) | set(rb)):
        out += differences(ra.get(n), rb.get(n), f"round {n}")
    out += differences(a.get("config"), b.get("config"), "config")
    out += differences(a.get("final"), b.get("final"), "final")
    return out


def main(argv: list[str] | None = None) -> int:
    from atm_fl.logs import setup_logging

    setup_logging()
    p = argparse.ArgumentParser(prog="python -m experiments.compare_runs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="results.json of one run")
    p.add_argument("b", help="results.json of the other")
    p.add_argument("--show", type=int, default=10, help="differences to list (default: 10)")
    args = p.parse_args(argv)
    runs = []
    for f in (args.a, args.b):
        try:
            runs.append(json.loads(Path(f).read_text()))
        except (OSError, ValueError) as exc:
            log.error("%s: cannot read it as results.json (%s)", f, exc)
            return 2
    diff = compare(*runs)
    if not diff:
        log.info("the runs agree to the bit: %d rounds, every metric but time", len(runs[0].get("rounds", [])))
        return 0
    log.info("%d values differ; the first %d:", len(diff), min(args.show, len(diff)))
    for where, x, y in diff[:args.show]:
        log.info("  %s: %r vs %r", where, x, y)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())

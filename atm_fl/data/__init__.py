"""Data pipelines of a client: a task split held in memory or streamed per batch (docs/data.md)."""

from atm_fl.data.splits import InMemorySplit, StreamingSplit, as_split, make_split

__all__ = ["InMemorySplit", "StreamingSplit", "as_split", "make_split"]

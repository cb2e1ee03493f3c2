"""Logging set-up shared by the server and client apps (library code only uses ``logging``)."""

from __future__ import annotations

import logging
import sys

_PACKAGES = ("atm_fl", "strategies", "clients", "experiments")


def setup_logging(level: int = logging.INFO) -> None:
    """Send this project's loggers to stderr once per process, with a short format."""
    for name in _PACKAGES:
        logger = logging.getLogger(name)
        if getattr(logger, "_atm_fl_configured", False):
            continue
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
        logger._atm_fl_configured = True

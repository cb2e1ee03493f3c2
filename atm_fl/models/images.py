"""Turn an image column (uint8 arrays or PIL images) into a float tensor [N, 3, S, S] on 0..255."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def _as_rgb_array(img) -> np.ndarray:
    if hasattr(img, "convert"):  # PIL.Image
        return np.asarray(img.convert("RGB"))
    arr = np.asarray(img)
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        return arr[..., :3] if arr.shape[-1] != 1 else arr[..., 0]
    raise ValueError(f"cannot read an image of shape {arr.shape}; expected HxW or HxWxC")


def images_to_tensor(images, size: int, chunk: int = 1024) -> torch.Tensor:
    """Resize (bilinear, antialiased) and stack to float32 [N, 3, size, size], values 0..255.

    Grayscale images are repeated over the three channels, as the pretrained
    backbones expect RGB.
    """
    out = []
    # Same-shaped uint8 arrays (the offline tasks) go through in vectorised chunks.
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        for start in range(0, len(images), chunk):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + chunk])).float()
            x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.dim() == 3 else x.permute(0, 3, 1, 2)[:, :3]
            out.append(F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
        return torch.cat(out) if out else torch.empty(0, 3, size, size)
    for img in images:
        arr = _as_rgb_array(img)
        x = torch.from_numpy(np.ascontiguousarray(arr)).float()
        x = x.unsqueeze(0).expand(3, -1, -1) if x.dim() == 2 else x.permute(2, 0, 1)
        out.append(F.interpolate(x.unsqueeze(0), size=(size, size), mode="bilinear", antialias=True,
                                 align_corners=False)[0])
    return torch.stack(out) if out else torch.empty(0, 3, size, size)

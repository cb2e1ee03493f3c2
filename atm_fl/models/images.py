"""Read an image column (uint8 arrays or PIL images) and turn it into a float tensor [N, 3, S, S] on 0..255."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def read_images(split, column: str = "image"):
    """The images of ``split``: one uint8 array [N, H, W(, C)] when they share a shape, else a list.

    ``Array2D``/``Array3D`` columns (the offline tasks) go through Arrow with no per-row
    Python: in datasets 5.x ``split.with_format("numpy")[column]`` is a lazy ``Column``
    read row by row, about 25x slower. Other columns (PIL images from local folders
    or the hub) are decoded row by row and stacked when all shapes agree.
    """
    import datasets

    feat = split.features[column]
    if isinstance(feat, (datasets.Array2D, datasets.Array3D)):
        arr = split.select_columns([column]).with_format("arrow")[:][column].combine_chunks()
        out = arr.to_numpy(zero_copy_only=False)
        return out.reshape((len(split), *feat.shape)).astype(np.uint8, copy=False)
    arrays = [np.asarray(img, dtype=np.uint8) for img in split[column]]
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    return arrays


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
    backbones expect RGB. Each image is resized on its own values only, so a batch
    gives the same bits as the whole split (streamed and in-memory data agree).
    """
    out = []
    # Same-shaped uint8 arrays (the offline tasks) go through in vectorised chunks.
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        for start in range(0, len(images), chunk):
            # np.array copies: Arrow hands out read-only buffers, which torch.from_numpy warns about.
            x = torch.from_numpy(np.array(images[start:start + chunk])).float()
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

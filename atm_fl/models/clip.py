"""CLIP through ``open_clip``: the image encoder is fine-tuned and merged; each task's head is zero-shot.

Model. ``model-name`` is any open_clip architecture (``ViT-B-16``, ``ViT-L-14``, ...;
``hf-hub:org/repo`` and ``local-dir:/path`` work too) and ``model-pretrained`` its
pretrained tag (``openai``, ``laion2b_s34b_b88k``, ...; ``none`` for random weights).
Defaults: ``ViT-B-16`` / ``openai``, the paper's model. A path to a ``.json`` file
with an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) is
registered with ``open_clip.add_model_config`` and used by its file stem; the
offline tests use this for a tiny random CLIP. When a tag was trained with QuickGELU
(``openai``) the architecture is built with QuickGELU, as the weights expect.

Backbone. The visual tower only (``model.visual``); every parameter is trainable and
is a task-vector entry. It returns the un-normalised image embedding.

Head. The zero-shot classifier of the task: for each class, the text embeddings of
the class name in each of the task's prompt templates (``TaskSpec.templates``),
normalised, averaged and normalised again (open_clip's ``build_zero_shot_classifier``),
times the model's logit scale; image embeddings are normalised before the product.
It is frozen and never sent. It is built once per task and process from the
*pretrained* text tower, which is created for that purpose and freed right after;
the head weights (classes x embed_dim, e.g. 0.8 MB for SUN397 on ViT-B-16) are cached
per process for the last ``HEAD_CACHE_SIZE`` tasks, so a process that serves several
tasks, or rebuilds a task, keeps no text tower around.

Preprocessing. open_clip's own inference transform for the model and tag (resize,
centre crop, RGB; then ToTensor and Normalize). The geometric part runs when rows are
encoded (a whole small split once, or each batch of a streamed split, ``atm_fl.data``)
and gives uint8 pixels (a quarter of the memory of float32); ToTensor's scaling and the
normalisation run inside the backbone's forward on the device. Images may be PIL images
(``datasets.Image``) or uint8 arrays (HxW grayscale or HxWxC); grayscale becomes RGB. No
random augmentation: an example gives the same pixels in every round.
"""

from __future__ import annotations

import functools
import gc
import logging
from collections import OrderedDict
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from torch import nn

from atm_fl.models.base import Batch, ModelFamily, label_tensor

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-16"
DEFAULT_PRETRAINED = "openai"
RANDOM_INIT_SEED = 1234


def resolve_model(name: str, pretrained: str) -> tuple[str, str | None]:
    """(open_clip model name, pretrained tag or None) from the run-config values."""
    name = name or DEFAULT_MODEL
    tag = pretrained or DEFAULT_PRETRAINED
    if name.endswith(".json"):
        import open_clip

        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"run-config key 'model-name' = {name!r}: no such open_clip config file")
        open_clip.add_model_config(path)
        name = path.stem
    return name, (None if tag.lower() == "none" else tag)


def _has_schema(name: str) -> bool:
    return name.startswith(("hf-hub:", "local-dir:"))


def _quick_gelu(name: str, tag: str | None) -> bool:
    """True when the tag's weights were trained with QuickGELU but the architecture config lacks it."""
    import open_clip

    if tag is None or _has_schema(name):
        return False
    tag_cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    model_cfg = open_clip.get_model_config(name) or {}
    return bool(tag_cfg.get("quick_gelu", False)) and not model_cfg.get("quick_gelu", False)


def create_clip(name: str, tag: str | None, device: str = "cpu"):
    """The full open_clip model (pretrained weights when ``tag`` is given), in eval mode."""
    import open_clip

    try:
        # Random weights ('none') are seeded, so every process builds the same model and text head.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = open_clip.create_model(name, pretrained=None if _has_schema(name) else tag, device=device,
                                           force_quick_gelu=_quick_gelu(name, tag))
    except RuntimeError as exc:
        if "not found" in str(exc) or "Failed to download" in str(exc):
            raise RuntimeError(
                f"open_clip model {name!r} with pretrained={tag!r}: {exc}. Check run-config keys 'model-name' and "
                "'model-pretrained' (open_clip.list_pretrained() lists valid pairs; 'none' = random weights); "
                "pretrained weights need hub access or a filled cache on the first run.") from exc
        raise
    return model.eval()


@functools.lru_cache(maxsize=8)
def preprocess_for(name: str, tag: str | None):
    """open_clip's inference transform for ``name``/``tag``, built without creating the model when possible."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    model_cfg = None if _has_schema(name) else open_clip.get_model_config(name)
    if model_cfg is None:  # hf-hub: / local-dir: configs carry their own preprocessing: ask open_clip
        _, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, load_weights=False)
        return preprocess
    tag_cfg = (open_clip.get_pretrained_cfg(name, tag) or {}) if tag else {}
    pp = merge_preprocess_dict(PreprocessCfg(), tag_cfg)
    pp["size"] = model_cfg["vision_cfg"].get("image_size", pp["size"])
    return image_transform_v2(PreprocessCfg(**pp), is_train=False)


def split_transform(preprocess):
    """(geometric part, (mean, std)) of an open_clip transform, split at its ToTensor step.

    Returns ``(preprocess, None)`` when the transform does not have that shape; the
    caller then stores normalised float pixels instead of uint8.
    """
    steps = list(getattr(preprocess, "transforms", []))
    names = [type(t).__name__ for t in steps]
    if len(steps) >= 2 and names[-1] == "Normalize" and names[-2] in ("ToTensor", "MaybeToTensor"):
        from torchvision.transforms import Compose

        norm = steps[-1]
        return Compose(steps[:-2]), (tuple(float(m) for m in norm.mean), tuple(float(s) for s in norm.std))
    return preprocess, None


def _to_pil(img) -> Image.Image:
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3):
        raise ValueError(f"cannot read an image of shape {arr.shape}; expected HxW or HxWxC")
    return Image.fromarray(arr).convert("RGB")


def iter_images(split: datasets.Dataset, column: str = "image", chunk: int = 512):
    """The images of ``split`` one by one: PIL images or uint8 arrays, whatever the column holds."""
    feature = split.features[column]
    for start in range(0, len(split), chunk):
        part = split.select(range(start, min(start + chunk, len(split))))
        if isinstance(feature, datasets.Image):
            yield from part[column]
        else:  # Array2D/Array3D or nested lists: one Arrow -> numpy conversion per chunk
            yield from part.with_format("numpy")[column]


class CLIPImageEncoder(nn.Module):
    """open_clip's visual tower; uint8 pixels are scaled and normalised inside ``forward``."""

    def __init__(self, visual: nn.Module, mean=None, std=None):
        super().__init__()
        self.visual = visual
        # Not in the state dict: they are constants of the preprocessing, not weights.
        self.register_buffer("mean", torch.tensor(mean or (0.0, 0.0, 0.0)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or (1.0, 1.0, 1.0)).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dtype == torch.uint8:
            pixel_values = (pixel_values.float() / 255.0 - self.mean) / self.std
        return self.visual(pixel_values)


class ZeroShotHead(nn.Module):
    """logits = scale * normalise(features) @ weight.T, weight rows unit-norm class text embeddings."""

    def __init__(self, weight: torch.Tensor, scale: float):
        super().__init__()
        self.register_buffer("weight", weight.detach().float().clone())
        self.scale = float(scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = nn.functional.normalize(features.float(), dim=-1)
        return self.scale * z @ self.weight.T


# Zero-shot weights by (model, tag, classes, templates); least recently used first.
_HEADS: "OrderedDict[tuple, tuple[torch.Tensor, float]]" = OrderedDict()
HEAD_CACHE_SIZE = 32


def zero_shot_weights(name: str, tag: str | None, classes: tuple[str, ...], templates: tuple[str, ...],
                      device: str = "cpu") -> tuple[torch.Tensor, float]:
    """(class weights [C, D], logit scale) from the pretrained text tower; cached per process."""
    key = (name, tag, tuple(classes), tuple(templates))
    if key in _HEADS:
        _HEADS.move_to_end(key)
    else:
        import open_clip

        model = create_clip(name, tag, device=device)
        model.visual = None  # the image tower is not needed here
        tokenizer = open_clip.get_tokenizer(name)
        with torch.no_grad():
            weight = open_clip.build_zero_shot_classifier(model, tokenizer, list(classes), list(templates),
                                                          num_classes_per_batch=16, device=device)
            scale = float(model.logit_scale.exp())
        _HEADS[key] = (weight.T.float().cpu(), scale)
        while len(_HEADS) > HEAD_CACHE_SIZE:
            _HEADS.popitem(last=False)
        del model
        gc.collect()
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
        log.info("zero-shot head: %d classes x %d templates, logit scale %.1f", len(classes), len(templates), scale)
    return _HEADS[key]


class OpenCLIPFamily(ModelFamily):
    name = "open-clip"
    head_reads_data = False  # zero-shot heads come from class names and templates

    @property
    def model(self) -> tuple[str, str | None]:
        return resolve_model(self.cfg.model_name, self.cfg.model_pretrained)

    def build_backbone(self) -> nn.Module:
        name, tag = self.model
        model = create_clip(name, tag)
        _, norm = split_transform(preprocess_for(name, tag))
        visual = model.visual
        del model
        backbone = CLIPImageEncoder(visual, *(norm or (None, None)))
        for p in backbone.parameters():
            p.requires_grad_(True)
        return backbone

    def encode(self, split, task) -> Batch:
        if task.modality != "image":
            raise ValueError(f"model-family 'open-clip' needs image tasks; task {task.name!r} is {task.modality}")
        geometric, norm = split_transform(preprocess_for(*self.model))
        if len(split) == 0:
            raise ValueError(f"task {task.name!r}: an empty split cannot be encoded")
        pixels = None  # allocated once the first image gives the size: no second copy of a large split
        for i, img in enumerate(iter_images(split)):
            out = geometric(_to_pil(img))
            if norm is None:  # an unusual transform: it already returns a normalised float tensor
                x = out
            else:
                x = torch.from_numpy(np.array(out.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
            if pixels is None:
                pixels = torch.empty((len(split), *x.shape), dtype=x.dtype)
            pixels[i] = x
        return {"pixel_values": pixels, "labels": label_tensor(split)}

    def build_head(self, backbone: nn.Module, task, train=None) -> nn.Module:
        from atm_fl.tasks import get_task

        name, tag = self.model
        templates = tuple(get_task(task.name).templates) or ("a photo of a {}.",)
        weight, scale = zero_shot_weights(name, tag, tuple(task.classes), templates, device=self.device)
        return ZeroShotHead(weight, scale)

    def describe(self) -> dict:
        name, tag = self.model
        out = {"family": self.name, "model": name, "pretrained": tag or "none (random weights)",
               "source": "open_clip_torch " + _open_clip_version()}
        if tag == "openai":
            out["license"] = "MIT (OpenAI CLIP weights)"
        return out


def _open_clip_version() -> str:
    try:
        import open_clip

        return open_clip.__version__
    except Exception:  # noqa: BLE001
        return "?"

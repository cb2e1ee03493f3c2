"""A site's own copy of a task's data: image folders, or csv/parquet tables, read with ``datasets``.

A data-owning site serves a task from its disk with the node config
``task=<name> data-dir=<path>`` (``flower-supernode --node-config "task=eurosat data-dir=/srv/eurosat"``).
Two layouts are accepted (docs/data.md has the full description):

Image folders (``datasets`` "imagefolder")::

    <dir>/train/<class name>/*.png|jpg|...
    <dir>/test/<class name>/...
    <dir>/validation/<class name>/...     (optional; otherwise carved from train)

Class names are the folder names, in sorted order, shared by all splits.

Tables::

    <dir>/train.csv   <dir>/test.csv   [<dir>/validation.csv]     (or .parquet)
    [<dir>/classes.txt]                                            (one class name per line)

Columns: ``label`` and, for image tasks, ``image`` (a file path, relative to
``<dir>`` or absolute); for text tasks ``text`` (and ``text_pair`` for sentence-pair
tasks). A string ``label`` is a class name (classes: the sorted names of all splits,
unless ``classes.txt`` fixes the order); an integer ``label`` is a class index into
``classes.txt``, or into the task's built-in class list when there is no such file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val", "valid", "dev"), "test": ("test",)}
_TABLE_SUFFIXES = (".csv", ".parquet")
_LAYOUT_HELP = ("expected either image folders <dir>/train/<class>/*.png and <dir>/test/<class>/*.png, "
                "or tables <dir>/train.csv and <dir>/test.csv (or .parquet) with columns {columns}; "
                "see docs/data.md ('Local data')")


class LocalDataError(ValueError):
    """A site's data directory that cannot be read as a task; the message names the directory and the fix."""


def _columns(modality: str) -> str:
    return "'image' (file path) and 'label'" if modality == "image" else "'text' [, 'text_pair'] and 'label'"


def _tables(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for split, aliases in _SPLIT_ALIASES.items():
        for alias in aliases:
            for suffix in _TABLE_SUFFIXES:
                path = root / f"{alias}{suffix}"
                if path.is_file():
                    if split in found:
                        raise LocalDataError(f"data-dir {str(root)!r} has two files for the {split} split "
                                             f"({found[split].name}, {path.name}); keep one.")
                    found[split] = path
    return found


def _folders(root: Path) -> list[str]:
    return [split for split, aliases in _SPLIT_ALIASES.items() if any((root / a).is_dir() for a in aliases)]


def load_local(data_dir: str, modality: str) -> datasets.DatasetDict:
    """Read a site's data directory as a ``DatasetDict`` with train/test (and maybe validation).

    The ``label`` column of the result is a ``ClassLabel`` whenever the data names its
    classes (folder names, string labels or ``classes.txt``), else an int column.

    Raises
    ------
    LocalDataError
        When the directory is missing, has neither layout, lacks a split or column,
        or has labels that do not fit its class list; the message names the
        directory, what was expected and how to fix it.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise LocalDataError(f"data-dir {str(root)!r} does not exist or is not a directory; "
                             "fix the node config 'data-dir' (an absolute path on this SuperNode's machine).")
    tables = _tables(root)
    if tables:
        dd = _load_tables(root, tables, modality)
    elif _folders(root):
        if modality != "image":
            raise LocalDataError(f"data-dir {str(root)!r} holds split folders, but this is a {modality} task: "
                                 + _LAYOUT_HELP.format(columns=_columns(modality)))
        dd = _load_image_folders(root)
    else:
        raise LocalDataError(f"data-dir {str(root)!r} has no train/test data: "
                             + _LAYOUT_HELP.format(columns=_columns(modality)))
    missing = [s for s in ("train", "test") if s not in dd]
    if missing:
        raise LocalDataError(f"data-dir {str(root)!r} has no {' or '.join(missing)} split (found: "
                             f"{', '.join(dd) or 'none'}): " + _LAYOUT_HELP.format(columns=_columns(modality)))
    log.info("local data %s: %s", root, {k: len(v) for k, v in dd.items()})
    return dd


def _load_image_folders(root: Path) -> datasets.DatasetDict:
    try:
        dd = datasets.load_dataset("imagefolder", data_dir=str(root))
    except Exception as exc:  # noqa: BLE001 - re-raised with the directory and the layout
        raise LocalDataError(f"data-dir {str(root)!r}: could not read image folders ({type(exc).__name__}: {exc}); "
                             + _LAYOUT_HELP.format(columns=_columns("image"))) from exc
    if not isinstance(dd["train"].features.get("label"), datasets.ClassLabel):
        raise LocalDataError(f"data-dir {str(root)!r}: images must sit in one folder per class, "
                             f"<dir>/train/<class>/<file>; found no class folders.")
    names = dd["train"].features["label"].names
    if len(names) < 2:
        raise LocalDataError(f"data-dir {str(root)!r}: found {len(names)} class folder(s) ({names}); "
                             "a classification task needs at least 2, one folder per class under each split.")
    return datasets.DatasetDict({k: v.select_columns(["image", "label"]) for k, v in dd.items()})


def _read_classes(root: Path) -> list[str] | None:
    path = root / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise LocalDataError(f"{path}: class names repeat; give each class once, one per line, in label order.")
    return names


def _load_tables(root: Path, tables: dict[str, Path], modality: str) -> datasets.DatasetDict:
    kinds = {p.suffix for p in tables.values()}
    if len(kinds) > 1:
        raise LocalDataError(f"data-dir {str(root)!r} mixes csv and parquet files; use one format for all splits.")
    builder = "csv" if kinds == {".csv"} else "parquet"
    try:
        dd = datasets.load_dataset(builder, data_files={k: str(v) for k, v in tables.items()})
    except Exception as exc:  # noqa: BLE001
        raise LocalDataError(f"data-dir {str(root)!r}: could not read {builder} files ({type(exc).__name__}: {exc})."
                             ) from exc
    inputs = ["image"] if modality == "image" else ["text"]
    for split, ds in dd.items():
        missing = [c for c in inputs + ["label"] if c not in ds.column_names]
        if missing:
            raise LocalDataError(f"{tables[split]}: missing column(s) {', '.join(missing)} (has "
                                 f"{', '.join(ds.column_names)}); a {modality} task needs columns {_columns(modality)}.")
    keep = inputs + ["label"] + (["text_pair"] if modality == "text" and "text_pair" in dd["train"].column_names else [])
    dd = datasets.DatasetDict({k: v.select_columns(keep) for k, v in dd.items()})
    if modality == "image":
        dd = _resolve_images(root, dd, tables)
    return _label_column(root, dd, tables)


def _resolve_images(root: Path, dd: datasets.DatasetDict, tables: dict[str, Path]) -> datasets.DatasetDict:
    out = {}
    for split, ds in dd.items():
        paths = [str(p if Path(p).is_absolute() else root / p) for p in ds["image"]]
        absent = [p for p in paths if not Path(p).is_file()]
        if absent:
            raise LocalDataError(f"{tables[split]}: {len(absent)} image file(s) not found, e.g. {absent[0]!r}; "
                                 f"paths in the 'image' column are relative to {str(root)!r} or absolute.")
        out[split] = ds.remove_columns("image").add_column("image", paths).cast_column("image", datasets.Image())
    return datasets.DatasetDict(out)


def _label_column(root: Path, dd: datasets.DatasetDict, tables: dict[str, Path]) -> datasets.DatasetDict:
    names = _read_classes(root)
    dtypes = {split: ds.features["label"].dtype for split, ds in dd.items()}
    textual = {split: t in ("string", "large_string") for split, t in dtypes.items()}
    if any(textual.values()):
        if not all(textual.values()):
            raise LocalDataError(f"data-dir {str(root)!r}: the label column is text in some files and numbers in "
                                 f"others ({dtypes}); use class names everywhere or indices everywhere.")
        seen = sorted({str(v) for ds in dd.values() for v in ds["label"]})
        if names is None:
            names = seen
        unknown = [v for v in seen if v not in names]
        if unknown:
            raise LocalDataError(f"data-dir {str(root)!r}: label(s) {unknown[:5]} are not in classes.txt; "
                                 "add them there or fix the labels.")
    elif names is None:
        return dd  # integer labels; the task's built-in class list names them (checked by the registry)
    else:
        top = max(max(ds["label"]) for ds in dd.values() if len(ds))
        low = min(min(ds["label"]) for ds in dd.values() if len(ds))
        if low < 0 or top >= len(names):
            raise LocalDataError(f"data-dir {str(root)!r}: integer labels range {low}..{top}, but classes.txt "
                                 f"names {len(names)} classes; labels must be 0..{len(names) - 1}.")
    feature = datasets.ClassLabel(names=list(names))
    return datasets.DatasetDict({k: v.cast_column("label", feature) for k, v in dd.items()})

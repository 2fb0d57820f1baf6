"""Data sources for a search: read once on the laptop, packed into one `.npz`, fetched by the agent.

Sources: `sklearn:digits|wine|breast_cancer`, a folder of images with one sub-folder per class, a CSV
with a label column, an `.npz` holding `x` and `y`. Labels are stored as class indices into a list of
class names, so the exported model's output index maps back to a name through `labels.json`.
numpy only here; scikit-learn and Pillow are imported where a source needs them.
"""

from __future__ import annotations

import csv
import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nascloud.errors import UsageError
from nascloud.job import SearchSection

SKLEARN_SETS = ("digits", "wine", "breast_cancer")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SUPPORTED_TASKS = ("image_classification", "structured_data_classification")


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32; images (n, h, w, c), tables (n, features)
    y: np.ndarray  # int64 class indices into labels
    labels: list[str]


@dataclass(frozen=True)
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str]


def _kind(source: str) -> str:
    if source.startswith("sklearn:"):
        return "sklearn"
    if source.lower().endswith(".csv"):
        return "csv"
    if source.lower().endswith(".npz"):
        return "npz"
    return "folder"


def check_task(task: str) -> None:
    if task not in SUPPORTED_TASKS:
        raise UsageError(f"search.task {task}: the agent runs {' or '.join(SUPPORTED_TASKS)}; "
                         "change search.task")


def check_data_source(search: SearchSection) -> None:
    """Cheap checks that refuse bad input before any compute (called by launch on the laptop and by
    the agent): the task is one the agent runs, the source exists and fits the task."""
    task, source = search.task, search.data
    check_task(task)
    kind = _kind(source)
    if kind == "sklearn":
        name = source.split(":", 1)[1]
        if name not in SKLEARN_SETS:
            raise UsageError(f"search.data {source}: unknown data set; use one of "
                             + ", ".join(f"sklearn:{n}" for n in SKLEARN_SETS))
        if task == "image_classification" and name != "digits":
            raise UsageError(f"search.data {source} is a table, not images; "
                             "use task structured_data_classification")
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise UsageError(f"search.data {source}: no such file or folder; fix the path in the job file")
    if kind == "folder" and not path.is_dir():
        raise UsageError(f"search.data {source}: a file, but neither .csv nor .npz; give a .csv, an .npz or a "
                         "folder with one sub-folder of images per class")
    try:
        if kind == "csv":
            if task != "structured_data_classification":
                raise UsageError(f"search.data {source}: a CSV is a table; use task structured_data_classification")
            if not search.label_column:
                raise UsageError(f"search.data {source}: a CSV needs search.label_column naming the label column")
            with path.open(newline="") as handle:
                header = next(csv.reader(handle), [])
            if search.label_column not in header:
                raise UsageError(f"{source} has no column {search.label_column!r} (columns: "
                                 f"{', '.join(header) or 'none'}); fix search.label_column")
        elif kind == "npz":
            with np.load(path, allow_pickle=False) as archive:
                missing = {"x", "y"} - set(archive.files)
            if missing:
                raise UsageError(f"{source} lacks array(s) {', '.join(sorted(missing))}; save it with "
                                 "numpy.savez(path, x=..., y=...)")
        else:
            if task != "image_classification":
                raise UsageError(f"search.data {source}: a folder of images needs task image_classification")
            if len(_class_folders(path)) < 2:
                raise UsageError(f"search.data {source}: expected at least two sub-folders of images, one per class")
    except (OSError, ValueError, zipfile.BadZipFile) as error:  # unreadable, not text, not an .npz archive
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise UsageError(f"search.data {source}: cannot read it ({reason}); fix the file or the path") from None


def _class_folders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and any(
        f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir()))


def _indexed(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    names, index = np.unique(np.asarray(values).astype(str), return_inverse=True)
    # Integer labels sort by value, not as text ("10" after "9").
    try:
        order = np.argsort([float(n) for n in names], kind="stable")
    except ValueError:
        return index.astype(np.int64), [str(n) for n in names]
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[index].astype(np.int64), [str(names[i]) for i in order]


def _load_sklearn(name: str, task: str) -> Dataset:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    if name == "digits" and task == "image_classification":
        x = bunch.images[..., None]
    else:
        x = bunch.data
    labels = [str(n) for n in bunch.target_names]
    return Dataset(x.astype(np.float32), bunch.target.astype(np.int64), labels)


def _load_csv(path: Path, label_column: str) -> Dataset:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise UsageError(f"{path} has no data rows")
    features = [c for c in rows[0] if c != label_column]
    try:
        x = np.array([[float(row[c]) for c in features] for row in rows], dtype=np.float32)
    except (TypeError, ValueError):
        raise UsageError(f"{path}: feature columns must be numbers with no gaps; "
                         "encode text columns as numbers first") from None
    y, labels = _indexed(np.array([row[label_column] for row in rows]))
    return Dataset(x, y, labels)


def _load_folder(path: Path) -> Dataset:
    from PIL import Image

    folders = _class_folders(path)
    files = [(i, f) for i, d in enumerate(folders) for f in sorted(d.iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    images = [Image.open(f) for _, f in files]
    mode = "L" if all(im.mode in ("L", "1") for im in images) else "RGB"
    size = images[0].size  # every image is resized to the first one's size
    x = np.stack([np.asarray(im.convert(mode).resize(size), dtype=np.float32) for im in images])
    if mode == "L":
        x = x[..., None]
    y = np.array([i for i, _ in files], dtype=np.int64)
    return Dataset(x, y, [d.name for d in folders])


def _load_npz(path: Path, task: str) -> Dataset:
    with np.load(path, allow_pickle=False) as archive:
        x, raw_y = archive["x"].astype(np.float32), archive["y"]
    if task == "image_classification" and x.ndim == 3:
        x = x[..., None]
    y, labels = _indexed(raw_y)
    return Dataset(x, y, labels)


def load_source(search: SearchSection) -> Dataset:
    check_data_source(search)
    kind, source = _kind(search.data), search.data
    if kind == "sklearn":
        dataset = _load_sklearn(source.split(":", 1)[1], search.task)
    elif kind == "csv":
        dataset = _load_csv(Path(source).expanduser(), search.label_column or "")
    elif kind == "npz":
        dataset = _load_npz(Path(source).expanduser(), search.task)
    else:
        dataset = _load_folder(Path(source).expanduser())
    want = 4 if search.task == "image_classification" else 2
    if dataset.x.ndim != want:
        raise UsageError(f"search.data {source}: {search.task} needs {want}-D inputs, got shape "
                         f"{tuple(dataset.x.shape)}")
    if len(dataset.labels) < 2:
        raise UsageError(f"search.data {source}: only one class; classification needs at least two")
    return dataset


def pack_dataset(search: SearchSection, dest_dir: Path) -> Path:
    """Read the source and write it as `<sha256>.npz` in dest_dir (named by content, so an unchanged
    data set is uploaded once)."""
    dataset = load_source(search)
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=dest_dir)
    os.close(fd)
    np.savez(tmp, x=dataset.x, y=dataset.y, labels=np.array(dataset.labels))
    digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
    final = dest_dir / f"{digest}.npz"
    os.replace(tmp, final)
    return final


def load_packed(path: Path) -> Dataset:
    with np.load(path, allow_pickle=False) as archive:
        return Dataset(archive["x"], archive["y"], [str(n) for n in archive["labels"]])


def split(dataset: Dataset, seed: int, data_fraction: float = 1.0) -> Splits:
    """A fixed test split (20 %) by seed, then validation (20 % of the rest); data_fraction shrinks
    train and validation only, so a proxy search is scored on the same test set."""
    order = np.random.default_rng(seed).permutation(len(dataset.y))
    n_test = max(1, len(order) // 5)
    test, rest = order[:n_test], order[n_test:]
    rest = rest[: max(2, int(round(len(rest) * data_fraction)))]
    n_val = max(1, len(rest) // 5)
    val, train = rest[:n_val], rest[n_val:]
    x, y = dataset.x, dataset.y
    return Splits(x[train], y[train], x[val], y[val], x[test], y[test], dataset.labels)

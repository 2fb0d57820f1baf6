"""Data sources for a search: read once on the laptop, packed a few rows at a time into a folder of
.npy files (sealed in parts by nascloud.datasets), fetched and memory-mapped by the agent.

Sources: `sklearn:digits|wine|breast_cancer`, a folder of images with one sub-folder per class, a CSV
with a label column, an `.npz` holding `x` and `y`. Labels are stored as class indices into a list of
class names, so the exported model's output index maps back to a name through `labels.json`.
numpy only here; scikit-learn and Pillow are imported where a source needs them.
"""

from __future__ import annotations

import csv
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nascloud.datasets import PART_BYTES, seal
from nascloud.errors import NascloudError, UsageError
from nascloud.job import SearchSection

SKLEARN_SETS = ("digits", "wine", "breast_cancer")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
X_FILE, Y_FILE, LABELS_FILE = "x.npy", "y.npy", "labels.json"
PACKED_FILES = (X_FILE, Y_FILE, LABELS_FILE)
ROW_CHUNK_BYTES = 8 << 20  # a CSV's or .npz's rows are converted this many bytes at a time


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32; images (n, h, w, c), tables (n, features)
    y: np.ndarray  # int64 class indices into labels
    labels: list[str]


@dataclass(frozen=True)
class Splits:
    x: np.ndarray  # every row (a memmap for a packed set): the splits are indices into it
    y: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    labels: list[str]

    # The rows themselves, copied into memory: for a set small enough to hand Keras as arrays.
    @property
    def x_train(self) -> np.ndarray:
        return self.x[self.train]

    @property
    def y_train(self) -> np.ndarray:
        return self.y[self.train]

    @property
    def x_val(self) -> np.ndarray:
        return self.x[self.val]

    @property
    def y_val(self) -> np.ndarray:
        return self.y[self.val]

    @property
    def x_test(self) -> np.ndarray:
        return self.x[self.test]

    @property
    def y_test(self) -> np.ndarray:
        return self.y[self.test]


def _kind(source: str) -> str:
    if source.startswith("sklearn:"):
        return "sklearn"
    if source.lower().endswith(".csv"):
        return "csv"
    if source.lower().endswith(".npz"):
        return "npz"
    return "folder"


def check_data_source(search: SearchSection) -> None:
    """Cheap checks that refuse bad input before any compute (called by launch on the laptop and by
    the agent): the source exists and fits the task (the schema knows the tasks)."""
    task, source = search.task, search.data
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


def _check_shape(search: SearchSection, shape: tuple, labels: list[str]) -> None:
    want = 4 if search.task == "image_classification" else 2
    if len(shape) != want:
        raise UsageError(f"search.data {search.data}: {search.task} needs {want}-D inputs, got shape {tuple(shape)}")
    if len(labels) < 2:
        raise UsageError(f"search.data {search.data}: only one class; classification needs at least two")


class _Rows:
    """An .npy file written a few rows at a time: the header first (the shape is known), then the rows'
    bytes, so a data set larger than memory packs. (Plain writes rather than an np.memmap: a memmap's
    written pages count in the process's resident memory until the kernel evicts them.)"""

    def __init__(self, path: Path, shape: tuple):
        self.shape, self.written = tuple(int(n) for n in shape), 0
        self.file = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.file, {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
            "shape": self.shape})

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, *self.shape[1:])
        self.file.write(rows.data)
        self.written += len(rows)

    def __enter__(self) -> "_Rows":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()
        if exc[0] is None and self.written != self.shape[0]:
            raise NascloudError(f"packed {self.written} rows, expected {self.shape[0]}")  # a source changed mid-read


def _write_labels(folder: Path, y: np.ndarray, labels: list[str]) -> None:
    np.save(folder / Y_FILE, np.asarray(y, dtype=np.int64))
    (folder / LABELS_FILE).write_text(json.dumps(labels))


def _write_sklearn(search: SearchSection, folder: Path) -> None:
    from sklearn import datasets

    name = search.data.split(":", 1)[1]
    bunch = getattr(datasets, f"load_{name}")()
    if name == "digits" and search.task == "image_classification":
        x = bunch.images[..., None]
    else:
        x = bunch.data
    labels = [str(n) for n in bunch.target_names]
    _check_shape(search, x.shape, labels)
    with _Rows(folder / X_FILE, x.shape) as out:
        out.write(x)
    _write_labels(folder, bunch.target, labels)


def _write_csv(search: SearchSection, path: Path, folder: Path) -> None:
    label_column = search.label_column or ""
    with path.open(newline="") as handle:  # first pass: the labels and the row count
        reader = csv.DictReader(handle)
        features = [c for c in reader.fieldnames or () if c != label_column]
        raw_labels = [row[label_column] for row in reader]
    if not raw_labels:
        raise UsageError(f"{path} has no data rows")
    y, labels = _indexed(np.array(raw_labels))
    _check_shape(search, (len(y), len(features)), labels)
    rows_per_chunk = max(1, ROW_CHUNK_BYTES // (4 * max(1, len(features))))
    with path.open(newline="") as handle, _Rows(folder / X_FILE, (len(y), len(features))) as out:
        chunk = []
        for row in csv.DictReader(handle):
            try:
                chunk.append([float(row[c]) for c in features])
            except (TypeError, ValueError):
                raise UsageError(f"{path}: feature columns must be numbers with no gaps; "
                                 "encode text columns as numbers first") from None
            if len(chunk) == rows_per_chunk:
                out.write(np.array(chunk, dtype=np.float32))
                chunk = []
        if chunk:
            out.write(np.array(chunk, dtype=np.float32))
    _write_labels(folder, y, labels)


def _write_npz(search: SearchSection, path: Path, folder: Path) -> None:
    with np.load(path, allow_pickle=False) as archive:
        y, labels = _indexed(archive["y"])  # the labels are small; x is read a chunk at a time below
    with zipfile.ZipFile(path) as archive, archive.open("x.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(member)
        if fortran_order or dtype.hasobject:
            raise UsageError(f"search.data {search.data}: x is stored in Fortran order or as objects; save it with "
                             "numpy.savez(path, x=numpy.ascontiguousarray(x, dtype='float32'), y=...)")
        shape_out = (*shape, 1) if search.task == "image_classification" and len(shape) == 3 else shape
        _check_shape(search, shape_out, labels)
        row_bytes = max(1, dtype.itemsize * int(np.prod(shape[1:])))
        rows_per_chunk = max(1, ROW_CHUNK_BYTES // row_bytes)
        with _Rows(folder / X_FILE, shape_out) as out:
            for start in range(0, shape[0], rows_per_chunk):
                count = min(rows_per_chunk, shape[0] - start)
                out.write(np.frombuffer(member.read(count * row_bytes), dtype=dtype))
    _write_labels(folder, y, labels)


def _write_folder(search: SearchSection, path: Path, folder: Path) -> None:
    from PIL import Image

    folders = _class_folders(path)
    files = [(i, f) for i, d in enumerate(folders) for f in sorted(d.iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    modes, size = set(), None
    for _, f in files:  # headers only: the mode every image is converted to, the first one's size
        with Image.open(f) as image:
            modes.add(image.mode)
            size = size or image.size
    mode = "L" if modes <= {"L", "1"} else "RGB"
    shape = (len(files), size[1], size[0], 1 if mode == "L" else 3)  # every image is resized to the first's size
    labels = [d.name for d in folders]
    _check_shape(search, shape, labels)
    with _Rows(folder / X_FILE, shape) as out:
        for _, f in files:
            with Image.open(f) as image:
                out.write(np.asarray(image.convert(mode).resize(size), dtype=np.float32))
    _write_labels(folder, np.array([i for i, _ in files]), labels)


def write_source(search: SearchSection, folder: Path) -> None:
    """Read the source into folder as x.npy (float32 rows), y.npy (class indices) and labels.json, a few
    rows at a time: never the whole data set in memory."""
    check_data_source(search)
    folder.mkdir(parents=True, exist_ok=True)
    kind, source = _kind(search.data), Path(search.data).expanduser()
    if kind == "sklearn":
        _write_sklearn(search, folder)
    elif kind == "csv":
        _write_csv(search, source, folder)
    elif kind == "npz":
        _write_npz(search, source, folder)
    else:
        _write_folder(search, source, folder)


def pack_dataset(search: SearchSection, dest_dir: Path, part_bytes: int = PART_BYTES) -> Path:
    """Write the source into dest_dir and seal it in parts. Returns its manifest, dest_dir/<sha256>.json
    (named by content: an unchanged data set is uploaded once)."""
    write_source(search, dest_dir)
    return seal(dest_dir, list(PACKED_FILES), part_bytes)


def load_packed(folder: Path) -> Dataset:
    """A packed folder with x memory-mapped (read from disk as rows are indexed, never copied whole)."""
    return Dataset(np.load(folder / X_FILE, mmap_mode="r"), np.load(folder / Y_FILE),
                   json.loads((folder / LABELS_FILE).read_text()))


def load_source(search: SearchSection) -> Dataset:
    """The source read here (the agent on a job file, calibration): packed in a temporary folder and
    memory-mapped. The folder goes at once; the mapping keeps the file's content until x is dropped."""
    with tempfile.TemporaryDirectory(prefix="nascloud-data-") as temp:
        write_source(search, Path(temp))
        return load_packed(Path(temp))


def split(dataset: Dataset, seed: int, data_fraction: float = 1.0) -> Splits:
    """A fixed test split (20 %) by seed, then validation (20 % of the rest); data_fraction shrinks
    train and validation only, so a proxy search is scored on the same test set. The splits are row
    indices into the data set (a memmap stays on disk)."""
    order = np.random.default_rng(seed).permutation(len(dataset.y))
    n_test = max(1, len(order) // 5)
    test, rest = order[:n_test], order[n_test:]
    rest = rest[: max(2, int(round(len(rest) * data_fraction)))]
    n_val = max(1, len(rest) // 5)
    val, train = rest[:n_val], rest[n_val:]
    return Splits(dataset.x, dataset.y, train, val, test, dataset.labels)

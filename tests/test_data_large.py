"""Data of the seed's size: packed a few rows at a time, uploaded in parts by content (resumably), fetched
part by part and memory-mapped on the instance, and fed to the search batch by batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nascloud import datasets
from nascloud.agent.data import Dataset, load_packed, pack_dataset, split
from nascloud.errors import NascloudError
from nascloud.job import SearchSection

DIGITS = SearchSection(task="image_classification", data="sklearn:digits")


def image_folder(root: Path, per_class: int, side: int, mode: str, classes=("cat", "dog")) -> Path:
    """Noise images, a shade per class, PNG, written one at a time (the test never holds the set either)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    channels = 3 if mode == "RGB" else 1
    for label, base in zip(classes, (0, 64, 128)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = (base + rng.integers(0, 128, (side, side, channels))).astype(np.uint8)
            Image.fromarray(pixels.squeeze(), mode).save(root / label / f"{i:04d}.png", compress_level=1)
    return root


def bucket(tmp_path: Path):
    return datasets.bucket_store(f"file://{tmp_path / 'bucket'}/job-000000")


PACK_AND_MEASURE = """
import json, resource, sys, tracemalloc
from pathlib import Path
import PIL.Image, PIL.PngImagePlugin  # imported before the baseline: what packing adds is measured
from nascloud.agent.data import pack_dataset
from nascloud.job import SearchSection

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
manifest = pack_dataset(SearchSection(task="image_classification", data=sys.argv[1]), Path(sys.argv[2]),
                        part_bytes=4 << 20)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
print(json.dumps({"manifest": str(manifest), "traced_peak": tracemalloc.get_traced_memory()[1],
                  "rss_before": before * 1024, "rss_growth": (after - before) * 1024}))
"""


def test_packing_an_image_folder_holds_far_less_than_the_data_set(tmp_path):
    from PIL import Image

    folder = image_folder(tmp_path / "pics", per_class=128, side=256, mode="RGB")  # 201 MB of float32 pixels
    done = subprocess.run([sys.executable, "-c", PACK_AND_MEASURE, str(folder), str(tmp_path / "packed")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    dataset = load_packed(Path(measured["manifest"]).parent)
    size = dataset.x.nbytes
    assert dataset.x.shape == (256, 256, 256, 3) and size > 200e6
    print(f"packed {size / 1e6:.0f} MB: peak RSS {measured['rss_before'] / 1e6:.0f} MB after the imports, "
          f"{measured['rss_growth'] / 1e6:.1f} MB more while packing, "
          f"traced peak {measured['traced_peak'] / 1e6:.1f} MB")
    # Today's loader held every decoded image and the float32 array: more than the data set's size.
    assert measured["rss_growth"] < size / 8
    assert measured["traced_peak"] < size / 20
    # The rows are the images as before: converted, in class then file order.
    assert isinstance(dataset.x, np.memmap) and list(dataset.y[[0, 127, 128, 255]]) == [0, 0, 1, 1]
    for row, path in ((0, folder / "cat" / "0000.png"), (200, folder / "dog" / "0072.png")):
        assert np.array_equal(dataset.x[row], np.asarray(Image.open(path).convert("RGB"), dtype=np.float32))


UPLOAD_UNTIL_KILLED = """
import sys
from pathlib import Path
from nascloud import datasets
from nascloud.checkpoints.local import LocalObjects

put, sent = LocalObjects.put, 0

def put_then_hold(self, key, data):
    global sent
    put(self, key, data)
    if key.startswith(datasets.PARTS):
        sent += 1
        if sent == int(sys.argv[3]):
            print("sent", flush=True)
            sys.stdin.read()  # held mid-upload until the test kills this process

LocalObjects.put = put_then_hold
datasets.upload(datasets.bucket_store(sys.argv[1]), Path(sys.argv[2]))
"""


def test_an_interrupted_upload_resumes_with_only_the_missing_parts(tmp_path):
    manifest = pack_dataset(DIGITS, tmp_path / "packed", part_bytes=16 << 10)
    total = sum(len(entry["parts"]) for entry in json.loads(manifest.read_bytes())["files"].values())
    assert total > 20
    job_url, arrived = f"file://{tmp_path / 'bucket'}/job-000000", 7
    with subprocess.Popen([sys.executable, "-c", UPLOAD_UNTIL_KILLED, job_url, str(manifest), str(arrived)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        assert proc.stdout.readline() == b"sent\n"
        proc.kill()
    parts = tmp_path / "bucket" / "data" / "parts"
    assert len(list(parts.iterdir())) == arrived
    assert not list((tmp_path / "bucket" / "data").glob("*.json"))  # no manifest: the set is incomplete

    again = bucket(tmp_path)
    assert datasets.upload(again, manifest) == total - arrived
    assert (again.requests.class_a, again.requests.class_b) == (1 + total - arrived + 1, 0)  # LIST, parts, manifest
    print(f"{total} parts; killed after {arrived}; the second upload sent {total - arrived}")

    unchanged = bucket(tmp_path)
    assert datasets.upload(unchanged, manifest) == 0
    assert (unchanged.requests.class_a, unchanged.requests.class_b) == (1, 0)  # one LIST, nothing sent
    folder = datasets.fetch(bucket(tmp_path), datasets.object_name(manifest), tmp_path / "work")
    for name in ("x.npy", "y.npy", "labels.json"):
        assert (folder / name).read_bytes() == (manifest.parent / name).read_bytes()


def test_the_instance_memory_maps_the_set_into_the_same_splits(tmp_path):
    from sklearn.datasets import load_digits

    manifest = pack_dataset(DIGITS, tmp_path / "packed", part_bytes=16 << 10)
    datasets.upload(bucket(tmp_path), manifest)
    name = datasets.object_name(manifest)
    dataset = load_packed(datasets.fetch(bucket(tmp_path), name, tmp_path / "work"))
    assert isinstance(dataset.x, np.memmap)
    digits = load_digits()  # what the agent held before: the arrays in memory
    before = Dataset(digits.images[..., None].astype(np.float32), digits.target.astype(np.int64),
                     [str(n) for n in digits.target_names])
    for fraction in (1.0, 0.3):
        got, want = split(dataset, seed=1, data_fraction=fraction), split(before, seed=1, data_fraction=fraction)
        for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            assert np.array_equal(getattr(got, field), getattr(want, field)), field
        assert got.labels == want.labels

    again = bucket(tmp_path)  # a restarted agent on the same disk downloads nothing but the manifest
    datasets.fetch(again, name, tmp_path / "work")
    assert (again.requests.class_a, again.requests.class_b) == (0, 1)

    part = next((tmp_path / "bucket" / "data" / "parts").iterdir())
    part.write_bytes(bytes(len(part.read_bytes())))  # same size, other bytes
    with pytest.raises(NascloudError, match=r"data/parts/[0-9a-f]{64} of data set [0-9a-f]{64} is damaged"):
        datasets.fetch(bucket(tmp_path), name, tmp_path / "elsewhere")


def test_a_short_search_streams_an_image_folder_from_its_memmap(tmp_path, monkeypatch):
    import keras

    from nascloud.agent import search as search_module
    from nascloud.agent.runner import _EpochClock, quiet_tensorflow

    quiet_tensorflow()
    # Three classes: AutoKeras refuses one-hot labels of two classes (it wants one column).
    pics = image_folder(tmp_path / "pics", 30, 12, "L", classes=("a", "b", "c"))
    search = SearchSection(task="image_classification", data=str(pics), max_trials=2, epochs=2, seed=1,
                           space={"block_type": ["vanilla"], "num_blocks": [1, 1], "num_layers": [1, 1],
                                  "kernel_size": [3], "dropout": [0.0, 0.25], "normalize": [True]})
    manifest = pack_dataset(search, tmp_path / "packed")
    datasets.upload(bucket(tmp_path), manifest)
    splits = split(load_packed(datasets.fetch(bucket(tmp_path), datasets.object_name(manifest), tmp_path / "work")),
                   search.seed)
    monkeypatch.setattr(search_module, "IN_MEMORY_BYTES", 0)  # this small set takes the large sets' path
    fed = []
    fit = keras.Model.fit

    def recording_fit(self, x=None, *args, **kwargs):  # what Keras is handed; the real fit runs
        fed.append(type(x).__name__)
        return fit(self, x, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    search_module.set_seeds(search.seed)
    model = search_module.build_auto_model(search, tmp_path / "snap", _EpochClock())
    search_module.fit(model, search, splits)
    rows = search_module.trial_rows(tmp_path / "snap" / search_module.PROJECT, search.objective_name, search.maximize)
    assert [(row["status"], row["epochs"]) for row in rows] == [("COMPLETED", 2)] * 2
    assert len(fed) == 2 and all("Dataset" in kind for kind in fed)  # batches, never the array
    best = keras.models.load_model(tmp_path / "snap" / search_module.PROJECT / "best_model.keras")
    # The normalisation was adapted on every training row, streamed.
    normalization = next(layer for layer in best.layers if isinstance(layer, keras.layers.Normalization))
    assert np.allclose(np.ravel(normalization.mean), splits.x_train.mean(), rtol=1e-4)
    assert 0.0 <= search_module.accuracy_on_test(best, splits) <= 1.0


def test_an_npz_and_a_csv_pack_a_chunk_of_rows_at_a_time(tmp_path, monkeypatch):
    from nascloud.agent import data

    monkeypatch.setattr(data, "ROW_CHUNK_BYTES", 1000)  # many chunks, the last one short
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(101, 9, 7)), rng.choice(["b", "a", "c"], 101)
    np.savez_compressed(tmp_path / "set.npz", x=x, y=y)
    packed = load_packed(pack_dataset(SearchSection(data=str(tmp_path / "set.npz")), tmp_path / "npz").parent)
    assert np.array_equal(packed.x, x.astype(np.float32)[..., None])
    assert [packed.labels[i] for i in packed.y] == list(y)
    table = x.reshape(101, -1)[:, :5]
    (tmp_path / "t.csv").write_text("\n".join(["f0,f1,f2,f3,f4,label"] + [
        ",".join([*(repr(float(v)) for v in row), label]) for row, label in zip(table, y)]) + "\n")
    search = SearchSection(task="structured_data_classification", data=str(tmp_path / "t.csv"), label_column="label")
    packed = load_packed(pack_dataset(search, tmp_path / "csv").parent)
    assert np.array_equal(packed.x, table.astype(np.float32)) and packed.labels == ["a", "b", "c"]

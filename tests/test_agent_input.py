"""Data sources, packing, and bad input refused in one line before any compute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nascloud.agent.data import check_data_source, load_packed, load_source, pack_dataset, split
from nascloud.errors import UsageError
from nascloud.job import SearchSection, parse_job


def section(**fields) -> SearchSection:
    return SearchSection(**fields)


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize("fields, message", [
    ({"data": "sklearn:iris"},
     "search.data sklearn:iris: unknown data set; use one of sklearn:digits, sklearn:wine, sklearn:breast_cancer"),
    ({"data": "sklearn:wine"},
     "search.data sklearn:wine is a table, not images; use task structured_data_classification"),
    ({"data": "/nowhere/images"},
     "search.data /nowhere/images: no such file or folder; fix the path in the job file"),
])
def test_bad_sources_are_refused_in_one_line(fields, message):
    with pytest.raises(UsageError) as error:
        check_data_source(section(**fields))
    assert str(error.value) == message


def test_a_csv_without_the_label_column_is_refused(tmp_path):
    path = write_csv(tmp_path / "t.csv", "a,b,kind", ["1,2,x", "3,4,y"])
    with pytest.raises(UsageError) as error:
        check_data_source(section(task="structured_data_classification", data=str(path), label_column="label"))
    assert str(error.value) == f"{path} has no column 'label' (columns: a, b, kind); fix search.label_column"
    with pytest.raises(UsageError, match="needs search.label_column"):
        check_data_source(section(task="structured_data_classification", data=str(path)))


def test_an_empty_search_space_is_refused_by_the_job_file():
    with pytest.raises(UsageError) as error:
        parse_job({"name": "xy", "search": {"space": {"kernel_size": []}}})
    assert str(error.value) == ("job file: search.space: kernel_size is empty: the search space allows nothing; "
                                "list at least one choice")


def test_csv_packs_with_labels_in_natural_order(tmp_path):
    rows = [f"{i},{i * 2},{label}" for i, label in enumerate([10, 9, 2, 10, 9, 2])]
    path = write_csv(tmp_path / "t.csv", "a,b,label", rows)
    search = section(task="structured_data_classification", data=str(path), label_column="label")
    dataset = load_packed(pack_dataset(search, tmp_path / "out").parent)
    assert dataset.labels == ["2", "9", "10"]
    assert dataset.x.shape == (6, 2) and dataset.x.dtype == np.float32
    assert [dataset.labels[i] for i in dataset.y] == ["10", "9", "2", "10", "9", "2"]


def test_a_csv_with_text_features_is_refused(tmp_path):
    path = write_csv(tmp_path / "t.csv", "a,colour,label", ["1,red,x", "2,blue,y"])
    with pytest.raises(UsageError, match="feature columns must be numbers"):
        load_source(section(task="structured_data_classification", data=str(path), label_column="label"))


def test_an_image_folder_packs_one_class_per_sub_folder(tmp_path):
    from PIL import Image

    for label, shade in (("cat", 40), ("dog", 200)):
        (tmp_path / "pics" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (6 + i, 6), shade).save(tmp_path / "pics" / label / f"{i}.png")
    packed = pack_dataset(section(data=str(tmp_path / "pics")), tmp_path / "out")
    dataset = load_packed(packed.parent)
    assert packed.name == f"{__import__('hashlib').sha256(packed.read_bytes()).hexdigest()}.json"
    assert dataset.labels == ["cat", "dog"]
    assert dataset.x.shape == (6, 6, 6, 1)  # resized to the first image, one grey channel
    assert list(dataset.y) == [0, 0, 0, 1, 1, 1]


def test_an_npz_needs_x_and_y(tmp_path):
    np.savez(tmp_path / "only_x.npz", x=np.zeros((4, 3)))
    with pytest.raises(UsageError, match=r"lacks array\(s\) y"):
        check_data_source(section(task="structured_data_classification", data=str(tmp_path / "only_x.npz")))
    np.savez(tmp_path / "ok.npz", x=np.zeros((4, 8, 8)), y=np.array(["a", "b", "a", "b"]))
    dataset = load_source(section(data=str(tmp_path / "ok.npz")))
    assert dataset.x.shape == (4, 8, 8, 1) and dataset.labels == ["a", "b"]


def test_data_fraction_shrinks_training_but_keeps_the_test_split():
    dataset = load_source(section())
    full, proxy = split(dataset, seed=1), split(dataset, seed=1, data_fraction=0.2)
    assert np.array_equal(full.y_test, proxy.y_test)
    assert len(proxy.y_train) == pytest.approx(0.2 * len(full.y_train), rel=0.05)
    assert len(full.y_train) + len(full.y_val) + len(full.y_test) == len(dataset.y)


PROBE = """
import json, sys
from nascloud.cli import main
sys.argv = ["nascloud", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as stop:
    code = stop.code
print("\\nPROBE=" + json.dumps([code, sorted(m for m in sys.modules if m.split(".")[0] in
      ("tensorflow", "keras", "autokeras", "sklearn"))]), file=sys.stderr)
"""


@pytest.mark.parametrize("search, message", [
    ({"data": "/nowhere/x.csv", "task": "structured_data_classification", "label_column": "y"},
     "Error: search.data /nowhere/x.csv: no such file or folder; fix the path in the job file"),
    ({"task": "text_classification"},
     "Error: job.yaml: search.task: Input should be 'image_classification' or 'structured_data_classification'"),
])
def test_the_agent_command_refuses_bad_input_before_importing_tensorflow(tmp_path, search, message):
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"name": "bad", "search": search, "compute": {"gpu": None},
                               "checkpoint": {"bucket": f"file://{tmp_path}/bucket"}}))
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(["agent", str(job), "--work-dir",
                                                                     str(tmp_path / "w")])],
                          capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    code, heavy = json.loads(lines[-1].split("PROBE=", 1)[1])
    assert (code, lines[0].replace(f"{tmp_path}/", ""), heavy) == (2, message, [])
    assert not (tmp_path / "bucket").exists()


@pytest.mark.search
def test_calibrate_times_a_structured_search_and_estimate_reads_it(tmp_path):
    job = tmp_path / "wine.yaml"
    job.write_text(json.dumps({"name": "wine-cal", "search": {
        "task": "structured_data_classification", "data": "sklearn:wine", "max_trials": 5, "epochs": 4,
        "space": {"num_layers": [1, 1], "dropout": [0.0]}}}))
    env = {**os.environ, "NASCLOUD_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "nascloud", "calibrate", str(job)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "home" / "calibrations" / "wine-cal.json"
    record = json.loads(path.read_text())
    assert set(record) == {"seconds_per_epoch", "seconds_per_sample", "samples", "gpu", "measured_at",
                           "trial_overhead_seconds", "in_trial_overhead_seconds", "setup_seconds", "host_load"}
    # The whole trial is timed: its overhead beyond two epochs (tracing inside the fit, the build and the
    # tuner's bookkeeping around it) and the set-up before it (TensorFlow, the data) are measured too.
    assert 0 <= record["in_trial_overhead_seconds"] <= record["trial_overhead_seconds"]
    assert record["setup_seconds"] > 0
    assert record["samples"] == len(split(load_source(section(task="structured_data_classification",
                                                                  data="sklearn:wine")), seed=1).y_train)
    assert record["seconds_per_epoch"] > 0 and record["gpu"] is None
    assert record["seconds_per_sample"] == pytest.approx(record["seconds_per_epoch"] / record["samples"])
    assert str(path) in done.stdout


@pytest.mark.search
def test_a_two_class_data_set_is_searched_and_scored(tmp_path):
    # Two classes give AutoKeras a one-unit sigmoid head: its targets are one 0/1 column, its outputs a
    # probability per row (every trial failed when it was handed two one-hot columns).
    job = tmp_path / "cancer.yaml"
    job.write_text(json.dumps({"name": "cancer", "search": {
        "task": "structured_data_classification", "data": "sklearn:breast_cancer", "max_trials": 1, "epochs": 2},
        "checkpoint": {"bucket": f"file://{tmp_path / 'bucket'}"}}))
    done = subprocess.run([sys.executable, "-m", "nascloud", "agent", str(job), "--work-dir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NASCLOUD_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stdout + done.stderr
    from nascloud.checkpoints import open_store

    board = open_store(f"file://{tmp_path / 'bucket'}/cancer").get_json("results/leaderboard.json")
    assert [t["status"] for t in board["trials"]] == ["COMPLETED"]
    assert 0.0 < board["test_accuracy"] <= 1.0 and board["test_samples"] > 100

"""The deployability report on a real best model (the shared digits search): the .tflite files `results
--download` brings load with the runtime the report names and reproduce its test accuracies; a model the
converter cannot lower is reported with its ops, not raised."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version

import numpy as np
import pytest

from tests.fixtures.search import DIGITS_SEARCH

pytestmark = pytest.mark.search


def cli(home, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "nascloud", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NASCLOUD_HOME": str(home)}, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def digits_splits():
    from nascloud.agent.data import load_source, split
    from nascloud.job import SearchSection

    return split(load_source(SearchSection(**DIGITS_SEARCH)), seed=DIGITS_SEARCH["seed"])


def accuracy_one_by_one(path, splits) -> float:
    """The file's accuracy on the test split, a sample at a time as a device runs it, with LiteRT itself."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    right = 0
    for row in splits.test:
        x = np.asarray(splits.x[row:row + 1], dtype=np.float32)
        if in_scale:
            x = np.clip(np.round(x / in_scale + in_zero), -128, 127)
        interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interpreter.invoke()
        scores = interpreter.get_tensor(out["index"]).astype(np.float32)
        scores = (scores - out_zero) * out_scale if out_scale else scores
        right += int(np.argmax(scores[0]) == splits.y[row])
    return right / len(splits.test)


def test_downloaded_tflite_files_reproduce_the_reported_accuracies(digits_chain, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    folder = tmp_path / "results"
    board = json.loads(cli(tmp_path / "home", "results", digits_chain["url"], "--download", str(folder),
                                "--json").stdout)
    deploy = board["deploy"]
    assert deploy == json.loads((folder / "deploy.json").read_text())
    assert deploy["runtime"] == f"LiteRT (ai-edge-litert {version('ai-edge-litert')})"
    assert deploy["keras"]["test_accuracy"] == board["test_accuracy"]
    assert deploy["keras_bytes"] == (folder / "best_model.keras").stat().st_size
    best = next(row for row in board["trials"] if row["trial_id"] == board["best_trial_id"])
    assert deploy["parameters"] == best["parameters"]

    splits = digits_splits()
    assert deploy["test_samples"] == len(splits.test)
    for part in ("tflite", "int8"):
        entry = deploy[part]
        path = folder / entry["file"]
        assert "error" not in entry and path.stat().st_size == entry["bytes"]
        assert accuracy_one_by_one(path, splits) == pytest.approx(entry["test_accuracy"], abs=1e-9), part
        assert entry["latency_ms"] > 0
    assert deploy["keras"]["latency_ms"] > 0
    # INT8 for real: integer input, a file well under the float one, and the accuracy it keeps.
    assert Interpreter(model_path=str(folder / "best_model_int8.tflite")).get_input_details()[0]["dtype"] == np.int8
    assert deploy["int8"]["bytes"] < 0.6 * deploy["tflite"]["bytes"]
    assert deploy["int8"]["accuracy_kept"] == pytest.approx(deploy["int8"]["test_accuracy"]
                                                            / deploy["keras"]["test_accuracy"])
    assert deploy["int8"]["representative_rows"] == 200
    assert deploy["int8"]["test_accuracy"] > 0.5  # ten classes: far above chance after quantization too

    shown = cli(tmp_path / "home", "results", digits_chain["url"]).stdout
    assert f"run with LiteRT (ai-edge-litert {version('ai-edge-litert')})" in shown
    int8_row = next(line for line in shown.splitlines() if "tflite int8" in line)
    assert f"{deploy['int8']['accuracy_kept']:.1%}" in int8_row and "best_model_int8.tflite" in int8_row


def test_a_model_the_converter_cannot_lower_is_reported_with_its_ops(tmp_path):
    """TFLite has no MatrixDeterminant: both conversions fail, the report says so in one line, no file."""
    import keras
    import tensorflow as tf

    from nascloud.agent.data import Splits
    from nascloud.agent.deploy import export
    from nascloud.checkpoints import open_store

    @keras.saving.register_keras_serializable("test_deploy")
    class Determinant(keras.layers.Layer):
        def call(self, x):
            return tf.stack([tf.linalg.det(tf.reshape(x, (-1, 2, 2)))] * 2, axis=1)

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Softmax()(Determinant()(inputs)))
    model.save(tmp_path / "model.keras")
    rows = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    splits = Splits(rows, (rows[:, 0] > 0).astype(np.int64), np.arange(20), np.arange(20, 30), np.arange(30, 40),
                    ["a", "b"])
    store = open_store(f"file://{tmp_path / 'bucket'}/job")
    deploy = export(store, tmp_path / "model.keras", splits, 0.5, tmp_path / "out", seed=1)
    for part in ("tflite", "int8"):
        assert deploy[part]["error"] == "unsupported ops: MatrixDeterminant", deploy[part]
    assert store.get_json("results/deploy.json") == deploy
    assert deploy["keras"]["latency_ms"] > 0 and deploy["parameters"] == 0
    assert not store.exists("results/best_model.tflite") and not store.exists("results/best_model_int8.tflite")

"""Can the best model leave the cloud: its size, a TFLite conversion, INT8 post-training quantization and the
accuracy it keeps, and CPU latency per sample, measured on the instance at the end of the search.

TensorFlow's converter writes the .tflite files; they are run with LiteRT (`ai-edge-litert`, Google's
successor to tf.lite.Interpreter, which TensorFlow deprecates), the runtime an edge device would use.
A conversion that fails is reported (with the unsupported ops it names), never fatal: the search's results
stand without it. TensorFlow, Keras and LiteRT are imported inside the functions (the CLI stays light).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import statistics
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from nascloud.agent.data import Splits
from nascloud.agent.search import predict_test_rows

if TYPE_CHECKING:
    from nascloud.checkpoints import SnapshotStore

log = logging.getLogger("nascloud.agent")

FLOAT_FILE = "best_model.tflite"
INT8_FILE = "best_model_int8.tflite"
REPRESENTATIVE_ROWS = 200  # calibration rows for INT8, drawn from the training split
LATENCY_RUNS = 20  # batch-1 timings per model; the median is reported
RUNTIME_PACKAGE = "ai-edge-litert"

# The converter names what it cannot lower as 'tf.Op' (flex or custom) or, for INT8, the op it cannot quantize.
_OP = re.compile(r"'(tfl?\.\w+)' op|not (?:yet )?supported for op:? '?(\w+)")


def runtime() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"LiteRT ({RUNTIME_PACKAGE} {version(RUNTIME_PACKAGE)})"
    except PackageNotFoundError:  # then no file runs, and each says so: the search's results stand
        return f"LiteRT ({RUNTIME_PACKAGE} not installed: pip install 'nascloud[search]')"


def export(store: SnapshotStore, model_path: Path, splits: Splits, keras_accuracy: float, out_dir: Path,
           seed: int) -> dict:
    """The report and the files that converted, into the bucket's results/."""
    found = report(model_path, splits, keras_accuracy, out_dir, seed)
    for part in ("tflite", "int8"):
        if "file" in found[part]:
            store.put_file(f"results/{found[part]['file']}", out_dir / found[part]["file"])
    store.put_json("results/deploy.json", found)
    log.info("deployability: %s (%.1f s)", summary(found), found["seconds"])
    return found


def summary(found: dict) -> str:
    """One line: TFLite and INT8 as converted (with the accuracy INT8 keeps) or why not."""
    def part(name: str) -> str:
        entry = found[name]
        if "error" in entry:
            return f"{name} failed ({entry['error']})"
        kept = entry.get("accuracy_kept")
        return f"{name} {entry['test_accuracy']:.4f}" + (f" ({kept:.1%} kept)" if kept is not None else "")

    return f"keras {found['keras']['test_accuracy']:.4f}, {part('tflite')}, {part('int8')}"


def report(model_path: Path, splits: Splits, keras_accuracy: float, out_dir: Path, seed: int) -> dict:
    """The deployability report (deploy.json); the .tflite files that converted are left in out_dir under
    the names the report gives."""
    import keras
    import tensorflow as tf

    began = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    # CPU latency even on a GPU instance: a copy of the model whose weights live on the CPU.
    with keras.device("cpu:0"):
        model = keras.models.load_model(model_path, compile=False)
        sample = np.asarray(splits.x[splits.test[:1]], dtype=np.float32)
        keras_ms = _median_ms(lambda: model.predict_on_batch(sample))
    rows = np.random.default_rng(seed).choice(splits.train, min(REPRESENTATIVE_ROWS, len(splits.train)),
                                              replace=False)
    calibration = np.asarray(splits.x[np.sort(rows)], dtype=np.float32)

    def representative():
        for row in calibration:
            yield [row[None]]

    def int8(converter) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]  # integer-only kernels
        converter.inference_input_type = converter.inference_output_type = tf.int8

    result = {
        "parameters": int(model.count_params()), "keras_bytes": model_path.stat().st_size,
        "runtime": runtime(), "converter": f"TensorFlow {tf.__version__} tf.lite.TFLiteConverter",
        "cpu_count": os.cpu_count(), "latency_runs": LATENCY_RUNS, "test_samples": int(len(splits.test)),
        "keras": {"test_accuracy": keras_accuracy, "latency_ms": keras_ms},
        "tflite": _convert(model, out_dir / FLOAT_FILE, splits, None),
        "int8": {**_convert(model, out_dir / INT8_FILE, splits, int8), "representative_rows": len(calibration)},
    }
    if result["int8"].get("test_accuracy") is not None and keras_accuracy:
        result["int8"]["accuracy_kept"] = result["int8"]["test_accuracy"] / keras_accuracy
    result["seconds"] = round(time.monotonic() - began, 3)
    return result


def _convert(model, path: Path, splits: Splits, configure: Optional[Callable]) -> dict:
    """One conversion, then the file's test accuracy and batch-1 latency; {"error": why} when it fails."""
    import tensorflow as tf

    try:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if configure:
            configure(converter)
        # The converter prints the SavedModel it traces and warns about its own defaults: not the agent's log.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path.write_bytes(converter.convert())
    except Exception as error:  # the converter raises ConverterError, RuntimeError or ValueError alike
        return {"error": conversion_error(error)}
    try:
        interpreter = load_interpreter(path)
        accuracy = tflite_accuracy(interpreter, splits)
        latency = _median_ms(_batch_one(interpreter, np.asarray(splits.x[splits.test[:1]], dtype=np.float32)))
    except Exception as error:  # a file that converted but does not run is as undeployable: say why
        path.unlink()
        return {"error": f"converted, but {runtime()} cannot run it: {str(error).splitlines()[0]}"}
    return {"file": path.name, "bytes": path.stat().st_size, "test_accuracy": accuracy, "latency_ms": latency}


def conversion_error(error: Exception) -> str:
    """One line: the unsupported ops the converter named, else its first line."""
    text = str(error)
    ops = sorted({(a or b).removeprefix("tf.") for a, b in _OP.findall(text)})
    if ops:
        return "unsupported ops: " + ", ".join(ops)
    return next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)


def load_interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    return interpreter


def _quantized(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    if not scale:  # a float tensor
        return values.astype(detail["dtype"])
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(values / scale + zero), info.min, info.max).astype(detail["dtype"])


def _scores(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    return (values.astype(np.float32) - zero) * scale if scale else values


def tflite_accuracy(interpreter, splits: Splits) -> float:
    """Accuracy on the test rows, predicted a chunk at a time as the Keras model's are (the input resized to
    each chunk)."""
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def predict(x: np.ndarray) -> np.ndarray:
        interpreter.resize_tensor_input(inp["index"], list(x.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], _quantized(x.astype(np.float32), inp))
        interpreter.invoke()
        return _scores(interpreter.get_tensor(out["index"]), out)

    return float(np.mean(predict_test_rows(predict, splits) == splits.y[splits.test]))


def _batch_one(interpreter, sample: np.ndarray) -> Callable:
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(sample.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], _quantized(sample, inp))
    return interpreter.invoke


def _median_ms(call: Callable) -> float:
    call()  # the first call traces (Keras) or plans (LiteRT): not a sample's latency
    times = []
    for _ in range(LATENCY_RUNS):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return round(statistics.median(times) * 1000, 4)

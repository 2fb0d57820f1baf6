"""The constrained AutoKeras search and the tuner that makes it resumable.

TensorFlow, Keras and AutoKeras are imported inside the functions (the CLI must stay light).
The space is constrained by pre-declaring KerasTuner hyperparameters with the allowed values: a
block asking for `kernel_size` in [3, 5, 7] gets the job's [3] instead. This keeps AutoKeras' own
blocks (serialisable, reloadable) while limiting what they may try.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from nascloud.agent import objectives
from nascloud.agent.data import Splits
from nascloud.agent.notices import Notices, fault_point
from nascloud.job import SearchSection

PROJECT = "search"  # the KerasTuner project folder inside the snapshot directory
TRIAL_INFO = "nascloud.json"  # per-trial duration and parameter count, written into the trial folder
IMAGE_BLOCK = "image_block"
TABLE_BLOCK = "structured_data_block"
BATCH_SIZE = 32
IN_MEMORY_BYTES = 512 << 20  # an image set larger than this is fed batch by batch from its memmap
PREDICT_ROWS = 1024
APPLICATION_BLOCKS = {"resnet": "res_net_block_1", "xception": "xception_block_1",
                      "efficient": "efficient_net_block_1"}


class SearchHooks(Protocol):
    notices: Notices

    def trial_started(self, trial_id: str, epoch: int) -> None: ...

    def epoch_ended(self, trial_id: str, epoch: int) -> None:
        """Called at a consistent moment (every callback of the epoch has written its files)."""

    def trial_ended(self, trial_id: str) -> None:
        """Called after KerasTuner recorded the trial: the moment to publish a snapshot."""


def constraints(search: SearchSection):
    """KerasTuner hyperparameters holding the job's allowed values under AutoKeras' own names."""
    import keras_tuner

    space, hp = search.space, keras_tuner.HyperParameters()

    def choice(name: str, values: list) -> None:
        hp.Choice(name, sorted(set(values)))

    depth = list(range(space.num_layers[0], space.num_layers[1] + 1))
    if search.task == "structured_data_classification":
        choice(f"{TABLE_BLOCK}/dense_block_1/num_layers", depth)
        choice(f"{TABLE_BLOCK}/dense_block_1/dropout", space.dropout)
        return hp
    conv = f"{IMAGE_BLOCK}/conv_block_1"

    def vanilla() -> None:
        choice(f"{conv}/kernel_size", space.kernel_size)
        choice(f"{conv}/num_blocks", list(range(space.num_blocks[0], space.num_blocks[1] + 1)))
        choice(f"{conv}/num_layers", depth)
        choice(f"{conv}/dropout", space.dropout)

    def application(block_type: str) -> None:
        # Pretrained weights are downloaded at run time: that fails offline and surprises a budget.
        hp.Fixed(f"{IMAGE_BLOCK}/{APPLICATION_BLOCKS[block_type]}/pretrained", False)

    def block(block_type: str) -> None:
        vanilla() if block_type == "vanilla" else application(block_type)

    if len(space.block_type) > 1:
        choice(f"{IMAGE_BLOCK}/block_type", space.block_type)
        for block_type in space.block_type:
            with hp.conditional_scope(f"{IMAGE_BLOCK}/block_type", [block_type]):
                block(block_type)
    else:
        block(space.block_type[0])
    return hp


def _trial_info(trial_dir: Path) -> dict:
    try:
        return json.loads((trial_dir / TRIAL_INFO).read_text())
    except (OSError, ValueError):
        return {"elapsed": 0.0, "params": None, "epochs_done": 0, "logs": []}


def tuner_class(hooks: SearchHooks, search: SearchSection):
    """A Greedy tuner that resumes the running trial from its last epoch, scores trials on the job's
    objective and reports its moments."""
    import autokeras as ak
    import keras
    from keras_tuner.src.engine import tuner_utils

    notices = hooks.notices

    class HoldAtEpochEnd(keras.callbacks.Callback):
        """First in the list: from here to the hook's release, files are being written."""

        def on_epoch_end(self, epoch, logs=None):
            notices.hold()

    class TrialHook(keras.callbacks.Callback):
        """Last in the list: runs after BackupAndRestore and KerasTuner saved the epoch."""

        def __init__(self, trial_id: str, trial_dir: Path):
            super().__init__()
            self.trial_id, self.trial_dir = trial_id, trial_dir
            self.info = _trial_info(trial_dir)
            self.started = time.monotonic()

        def on_train_begin(self, logs=None):
            # BackupAndRestore (earlier in the list) has restored the weights of the epochs logged.
            self.info["params"] = int(self.model.count_params())
            hooks.trial_started(self.trial_id, len(self.info["logs"]))

        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                fault_point("epoch")  # mid-epoch

        def on_epoch_end(self, epoch, logs=None):
            try:
                epoch_logs = {k: float(v) for k, v in (logs or {}).items()}
                self.save(logs=self.info["logs"][:epoch] + [epoch_logs], epochs_done=epoch + 1)
                hooks.epoch_ended(self.trial_id, epoch)
            finally:
                notices.release()

        def save(self, **fields) -> None:
            now = time.monotonic()
            self.info["elapsed"] = self.info.get("elapsed", 0.0) + now - self.started
            self.started = now
            self.info.update(fields)
            (self.trial_dir / TRIAL_INFO).write_text(json.dumps(self.info))

    class ResumableTuner(ak.Greedy):
        stream = None  # a Stream: set by fit() for a data set fed batch by batch
        largest = None  # the space's largest parameter count, when the objective weighs model_size

        def __init__(self, *args, max_consecutive_failed_trials: int = 3, **kwargs):
            super().__init__(*args, **kwargs)
            # Greedy does not pass this to its oracle; the oracle enforces it.
            self.oracle.max_consecutive_failed_trials = max_consecutive_failed_trials

        def _backup_dir(self, trial_id: str) -> str:
            # One folder per trial: a shared one would leak weights into the next trial.
            return os.path.join(self.get_trial_dir(trial_id), "backup")

        def _build_and_fit_model(self, trial, *args, **kwargs):
            fault_point("fail-trial")
            # Added here, after KerasTuner deep-copied the user's callbacks: the hook holds references
            # (the store, the notices) that must not be copied.
            metrics = self._objective_metrics(kwargs["validation_data"])
            self._hook = TrialHook(trial.trial_id, Path(self.get_trial_dir(trial.trial_id)))
            kwargs["callbacks"] = [*metrics, HoldAtEpochEnd(), *kwargs.get("callbacks", []),
                                   keras.callbacks.BackupAndRestore(self._backup_dir(trial.trial_id),
                                                                    delete_checkpoint=False),
                                   self._hook]
            done = self._hook.info["logs"]
            for callback in kwargs["callbacks"]:
                if isinstance(callback, tuner_utils.SaveBestEpoch) and done:
                    # Keep the best epoch of the earlier runs unless a resumed epoch beats it.
                    for logs in done:
                        value = callback.objective.get_value(logs)
                        if callback.objective.better_than(value, callback.best_value):
                            callback.best_value = value
            if self.stream is None:
                history = super()._build_and_fit_model(trial, *args, **kwargs)
            else:
                history = self._fit_stream(trial, **kwargs)
            # A resumed fit only knows its own epochs: the trial is scored on all of them (and on the
            # logged ones alone when the kill came after the last epoch).
            logs = self._hook.info["logs"]
            history.history = {key: [epoch.get(key) for epoch in logs] for key in (logs[0] if logs else {})}
            history.epoch = list(range(len(logs)))
            return history

        def _objective_metrics(self, validation_data) -> list:
            """The objective's own metrics when Keras does not log it, first in the list: KerasTuner's
            callbacks and the trial's record (a resumed trial is scored on it) read the logs they write."""
            if not objectives.computed(search):
                return []
            if objectives.SIZE in objectives.terms(search) and self.largest is None:
                self.largest = objectives.cached_largest(Path(self.project_dir), self._try_build,
                                                         self.oracle.get_space())
            if self.stream is None:
                x, y = validation_data

                def validation():
                    return ((x[i:i + PREDICT_ROWS], y[i:i + PREDICT_ROWS]) for i in range(0, len(y), PREDICT_ROWS))
            else:
                validation = self.stream.batches(self.stream.splits.val, shuffle=False).as_numpy_iterator
            return [objectives.epoch_objectives(search, validation, self.largest)]

        def _fit_stream(self, trial, **kwargs):
            """AutoTuner._build_and_fit_model with the rows read from the memmap a batch at a time. AutoKeras
            adapts its layers on the whole array and Keras copies an array input into one tensor
            (ArrayDataAdapter's Dataset.from_tensors), so the pipeline and shapes come from the sample batch
            fit() passed, and training reads batches. The pipeline leaves the batches as they are: an image
            input has no preprocessors and the head's are identity on one-hot float32 labels."""
            hp = trial.hyperparameters
            model = self._try_build(hp)
            pipeline, (sample, _), _ = self._prepare_model_build(hp, x=kwargs.pop("x"), y=kwargs.pop("y"))
            pipeline.save(self._pipeline_path(trial.trial_id))
            keras.src.backend.compute_output_spec(model, sample)
            train = self.stream.batches(self.stream.splits.train, shuffle=True)
            _adapt(model, train.map(lambda x, y: x))
            kwargs.pop("batch_size", None)
            kwargs["validation_data"] = self.stream.batches(self.stream.splits.val, shuffle=False)
            return model.fit(train, **kwargs)

        def on_search_end(self):
            super().on_search_end()
            notices.hold()  # AutoKeras writes best_model.keras, its pipeline and its state next
            self._writing_results = True

        def search(self, *args, **kwargs):
            history = super().search(*args, **kwargs)
            if getattr(self, "_writing_results", False):
                self._writing_results = False
                self.save()  # AutoKeras sets `finished` after its last save; persist it for the snapshot
                notices.release()
            return history

        def pre_create_trial(self):
            notices.hold()  # create_trial writes oracle.json and trial.json

        def on_trial_begin(self, trial):
            super().on_trial_begin(trial)
            notices.release()

        def on_trial_end(self, trial):
            notices.hold()
            try:
                super().on_trial_end(trial)  # first: trial.json, oracle.json, tuner0.json agree after it
                hook = getattr(self, "_hook", None)
                if hook is not None and hook.trial_id == trial.trial_id:
                    hook.save()
                shutil.rmtree(self._backup_dir(trial.trial_id), ignore_errors=True)
                fault_point("publish")  # between the trial's end and its publish
                hooks.trial_ended(trial.trial_id)
            finally:
                notices.release()

    return ResumableTuner


def _adapt(model, batches) -> None:
    """AutoTuner.adapt over a Dataset of input batches instead of an array: a Normalization layer adapts
    on a batched Dataset in one pass."""
    import keras
    from autokeras import keras_layers

    def consumers(tensor) -> list:
        tensor = keras.tree.flatten(tensor)[0]
        return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)
                and keras.tree.flatten(layer.input)[0] is tensor
                and (isinstance(layer, keras_layers.PreprocessingLayer) or hasattr(layer, "adapt"))]

    queue = [(layer, batches) for layer in consumers(model.input)]
    while queue:
        layer, data = queue.pop(0)
        layer.adapt(data)
        queue += [(following, data.map(layer)) for following in consumers(layer.output)]


class Stream:
    """A packed data set too large to hand AutoKeras as arrays, read from its memmap a batch at a time."""

    def __init__(self, splits: Splits, seed: int):
        self.splits, self.seed = splits, seed

    def batches(self, rows: np.ndarray, shuffle: bool):
        import tensorflow as tf

        x, y, classes = self.splits.x, self.splits.y, len(self.splits.labels)
        rng = np.random.default_rng(self.seed)

        def read():  # called anew for every epoch: a new order each time when shuffling
            order = rng.permutation(rows) if shuffle else rows
            for start in range(0, len(order), BATCH_SIZE):
                index = np.sort(order[start:start + BATCH_SIZE])  # in file order: the reads go forward
                yield np.asarray(x[index], dtype=np.float32), one_hot(y[index], classes)

        columns = 1 if classes == 2 else classes
        spec = (tf.TensorSpec((None, *x.shape[1:]), tf.float32), tf.TensorSpec((None, columns), tf.float32))
        return tf.data.Dataset.from_generator(read, output_signature=spec).prefetch(2)


def streams(search: SearchSection, splits: Splits) -> bool:
    """Fed batch by batch: a memory-mapped image set above IN_MEMORY_BYTES. Smaller sets (the sklearn ones)
    are handed over as arrays, as before; tables always are (AutoKeras types their columns from the whole
    array)."""
    return (search.task == "image_classification" and isinstance(splits.x, np.memmap)
            and splits.x.nbytes > IN_MEMORY_BYTES)


def one_hot(y: np.ndarray, classes: int) -> np.ndarray:
    """The targets as AutoKeras' classification head wants them: one column per class, or a single 0/1
    column for two classes (its head is then one sigmoid unit)."""
    if classes == 2:
        return np.asarray(y, dtype=np.float32).reshape(-1, 1)
    return np.eye(classes, dtype=np.float32)[y]


def predicted_classes(scores: np.ndarray) -> np.ndarray:
    """Class indices from the model's outputs: the likeliest class, or for one sigmoid unit, above 0.5."""
    return (scores[:, 0] > 0.5).astype(int) if scores.shape[1] == 1 else np.argmax(scores, axis=1)


def set_seeds(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)


def build_auto_model(search: SearchSection, directory: Path, hooks: SearchHooks,
                     max_trials: int | None = None):
    import autokeras as ak
    import keras_tuner

    space = search.space
    choices = search.normalize_choices
    normalize = choices[0] if len(choices) == 1 else None  # None: AutoKeras tunes it
    if search.task == "structured_data_classification":
        inputs = ak.StructuredDataInput()
        block = ak.StructuredDataBlock(normalize=normalize, name=TABLE_BLOCK)(inputs)
    else:
        inputs = ak.ImageInput()
        block_type = space.block_type[0] if len(space.block_type) == 1 else None
        block = ak.ImageBlock(block_type=block_type, normalize=normalize, augment=space.augment,
                              name=IMAGE_BLOCK)(inputs)
    outputs = ak.ClassificationHead(name="classification_head")(block)
    return ak.AutoModel(
        inputs=inputs, outputs=outputs, tuner=tuner_class(hooks, search), overwrite=False,
        max_trials=max_trials or search.max_trials, directory=str(directory), project_name=PROJECT,
        objective=keras_tuner.Objective(search.objective_name, "max" if search.maximize else "min"),
        seed=search.seed, hyperparameters=constraints(search),
        tune_new_entries=True, max_consecutive_failed_trials=search.max_consecutive_failed_trials)


def fit(model, search: SearchSection, splits: Splits, epochs: int | None = None) -> None:
    """Run (or resume) the search. Passing validation data and our own EarlyStopping keeps AutoKeras
    from its final refit: the best trial's own checkpoint is the result, and a rerun refits nothing."""
    import keras

    classes = len(splits.labels)
    epochs = epochs or search.epochs
    train, val = splits.train, splits.val
    class_weight = objectives.class_weights(splits.y[train], classes) if search.class_weight == "balanced" else None
    if streams(search, splits):
        # AutoKeras takes arrays only: it learns the shapes from one batch; the tuner trains on the stream.
        model.tuner.stream = Stream(splits, search.seed)
        train, val = np.sort(train[:BATCH_SIZE]), np.sort(val[:BATCH_SIZE])
    model.fit(np.asarray(splits.x[train]), one_hot(splits.y[train], classes),
              validation_data=(np.asarray(splits.x[val]), one_hot(splits.y[val], classes)), epochs=epochs,
              callbacks=[keras.callbacks.EarlyStopping(patience=epochs, min_delta=1e-4)],
              class_weight=class_weight, batch_size=BATCH_SIZE, verbose=0)


def predict_test_rows(predict, splits: Splits) -> np.ndarray:
    """The predicted class of every test row, in the test split's order; `predict` (rows -> class scores, a
    Keras model's or scikit-learn's predict_proba) is called a chunk of rows at a time, so a memory-mapped
    set is never read whole."""
    return np.concatenate([predicted_classes(predict(np.asarray(splits.x[splits.test[start:start + PREDICT_ROWS]])))
                           for start in range(0, len(splits.test), PREDICT_ROWS)])  # split: a test row at least


def accuracy_on_test(model, splits: Splits) -> float:
    """The model's accuracy on the test rows."""
    predicted = predict_test_rows(lambda x: model.predict(x, verbose=0), splits)
    return float(np.mean(predicted == splits.y[splits.test]))


def trial_rows(project_dir: Path, objective: str, maximize: bool) -> list[dict]:
    """The leaderboard: every trial KerasTuner recorded, best score first, failed ones last."""
    rows = []
    for trial_dir in sorted(project_dir.glob("trial_*")):
        try:
            trial = json.loads((trial_dir / "trial.json").read_text())
        except (OSError, ValueError):
            continue
        info = _trial_info(trial_dir)
        rows.append({"trial_id": trial["trial_id"], "status": trial["status"],
                     "hyperparameters": trial["hyperparameters"]["values"], "score": trial.get("score"),
                     "objective": objective, "duration_seconds": round(info.get("elapsed", 0.0), 3),
                     "epochs": info.get("epochs_done"), "parameters": info.get("params")})
    return rank_trials(rows, maximize)


def rank_trials(rows: list[dict], maximize: bool) -> list[dict]:
    """Best score first, failed ones last (a job's seeds' trials are ranked together too)."""
    done = [r for r in rows if r["status"] == "COMPLETED" and r["score"] is not None]
    done.sort(key=lambda r: -r["score"] if maximize else r["score"])
    return done + [r for r in rows if r not in done]


def gpu_names() -> list[str]:
    import tensorflow as tf

    names = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        names.append(details.get("device_name", device.name))
    return names

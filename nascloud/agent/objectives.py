"""The search's own objectives, computed at every epoch's end and written into the epoch's logs before
KerasTuner reads them, so the tuner's objective is the metric itself: the epoch SaveBestEpoch keeps, each
trial's score in trial.json (where KerasTuner 1.4 records the objective's name and direction; its oracle.json
holds none) and the trial the oracle ranks first. Not a re-ranking after the search.

- `val_balanced_accuracy`: the mean of the per-class recalls on the validation split.
- `model_size`: 1 - ln(parameters) / ln(the parameters of the space's largest model), in [0, 1]: higher for
  a smaller model, 0 for the largest (see model_size and largest_parameters).
- `val_weighted_score`: the job's weights times val_accuracy, val_balanced_accuracy and model_size, summed.

And the class weights of `class_weight: balanced`. numpy only at import; Keras inside the functions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from nascloud.job import WEIGHTED_OBJECTIVE, SearchSection

BALANCED = "val_balanced_accuracy"
SIZE = "model_size"
LARGEST_FILE = "nascloud_largest.json"  # in the tuner's project folder: a resumed search reads it, builds nothing
# Hyperparameters whose value changes no weight: any one value stands for all.
NO_WEIGHTS = {"dropout", "optimizer", "learning_rate", "trainable", "translation_factor", "vertical_flip",
              "horizontal_flip", "rotation_factor", "zoom_factor", "contrast_factor"}
# Hyperparameters with a value that never has fewer weights than the others, the rest alike: a full
# convolution over a separable one, no pooling and a flattened map (a larger head), batch normalisation and
# normalisation layers (count_params counts their statistics), the input resized to ImageNet's size.
MOST_WEIGHTS = {"separable": False, "max_pooling": False, "reduction_type": "flatten", "use_batchnorm": True,
                "normalize": True, "imagenet_size": True}
WIDTHS = ("filters_", "units_")  # a layer's width: the largest value has the most weights


def class_weights(y: np.ndarray, classes: int) -> dict[int, float]:
    """scikit-learn's "balanced" weights, n / (classes * count), for the classes the training rows hold
    (Keras weighs an absent class 1.0; it never occurs in training anyway)."""
    counts = np.bincount(y, minlength=classes)
    return {c: len(y) / (classes * int(n)) for c, n in enumerate(counts) if n}


def terms(search: SearchSection) -> set[str]:
    """The metrics the objective needs computed here (Keras logs val_accuracy and val_loss itself)."""
    names = set(search.objective) if isinstance(search.objective, dict) else {search.objective}
    return names & {BALANCED, SIZE}


def computed(search: SearchSection) -> bool:
    """Whether the tuner's objective is computed here rather than logged by Keras."""
    return search.objective_name in (BALANCED, WEIGHTED_OBJECTIVE)


def _values(hp) -> list:
    from keras_tuner.engine import hyperparameters as kt

    if isinstance(hp, kt.Boolean):
        return [True, False]
    if isinstance(hp, kt.Fixed):
        return [hp.value]
    if isinstance(hp, (kt.Choice, kt.Int)):
        return list(hp.values)
    return [hp.default]  # a Float: AutoKeras' are rates, with no weights


def largest_parameters(build: Callable, space) -> int:
    """The parameter count of the space's largest model: the maximum over every combination of the
    hyperparameters that may change the weights either way (depth, kernel size, block type, version: a
    deeper net with `valid` padding may end in a smaller map and a smaller head), each width at its
    largest and each MOST_WEIGHTS one at its value. build(hp) builds the model; space is the tuner's
    hyperparameters, populated. A conditional branch's hyperparameters appear when a build opens it."""
    def pick(hp, fixed: dict):
        short, values = hp.name.rsplit("/", 1)[-1], _values(hp)
        if hp.name in fixed:
            return fixed[hp.name]
        if len(values) == 1 or short in NO_WEIGHTS:
            return hp.default if hp.default in values else values[0]
        if MOST_WEIGHTS.get(short, ...) in values:
            return MOST_WEIGHTS[short]
        if short.startswith(WIDTHS):
            return max(values)
        return None  # try each

    def explore(fixed: dict) -> int:
        hp, built, params = space.copy(), -1, 0
        while built != len(hp.space):
            for each in hp.space:
                if not hp.is_active(each):
                    continue
                value = pick(each, fixed)
                if value is None:
                    return max(explore({**fixed, each.name: v}) for v in _values(each))
                hp.values[each.name] = value
            built = len(hp.space)
            params = int(build(hp).count_params())  # may register the hyperparameters of a branch just opened
        return params

    return explore({})


def cached_largest(project_dir: Path, build: Callable, space) -> int:
    path = Path(project_dir) / LARGEST_FILE
    try:
        return int(json.loads(path.read_text())["largest_parameters"])
    except (OSError, ValueError, KeyError):
        pass
    largest = largest_parameters(build, space)
    path.write_text(json.dumps({"largest_parameters": largest}))
    return largest


def model_size(params: int, largest: int) -> float:
    """1 - ln(params) / ln(largest), in [0, 1]: on a log scale, so that halving a model earns as much at 10
    thousand parameters as at 10 million (against the largest linearly, every model far below it would score
    about 1, and the weight would decide nothing)."""
    return min(1.0, max(0.0, 1.0 - math.log(max(params, 1)) / math.log(max(largest, 2))))


def epoch_objectives(search: SearchSection, validation: Callable[[], Iterable], largest: Optional[int]):
    """A Keras callback adding the objective's own metrics to each epoch's logs. validation() yields the
    validation split's (inputs, one-hot targets) in batches; largest: the space's largest parameter count,
    when the objective weighs model_size. To be first in the callback list: every later callback (KerasTuner's
    SaveBestEpoch, the trial's record a resumed trial is scored on, History) reads the same logs dict."""
    import keras
    from sklearn.metrics import balanced_accuracy_score

    from nascloud.agent.search import predicted_classes

    needed = terms(search)
    weights = search.objective if isinstance(search.objective, dict) else None

    class EpochObjectives(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.size = model_size(self.model.count_params(), largest) if SIZE in needed else None

        def on_epoch_end(self, epoch, logs=None):
            if BALANCED in needed:
                truth, predicted = [], []
                for x, y in validation():
                    truth.append(predicted_classes(np.asarray(y)))
                    predicted.append(predicted_classes(np.asarray(self.model.predict_on_batch(x))))
                logs[BALANCED] = float(balanced_accuracy_score(np.concatenate(truth), np.concatenate(predicted)))
            if self.size is not None:
                logs[SIZE] = self.size
            if weights is not None:
                logs[WEIGHTED_OBJECTIVE] = float(sum(w * logs[name] for name, w in weights.items()))

    return EpochObjectives()

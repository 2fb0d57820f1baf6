"""The best model held against the held-out test split, and against a plain model trained on the same split.

A finished search is not yet a good model: the seed article's user always compared with a hand-made
baseline, and a 1:100 data set fooled their search into 94 % accuracy by predicting the majority class. So the
agent writes, beside the leaderboard, the best model's report on the test rows (accuracy, balanced accuracy,
per-class precision, recall, F1 and support, the confusion matrix) and a baseline's: for tables a
standardised logistic regression, for images a small fixed CNN, both deliberately plain (no tuning, no class
weighting) and trained on the search's own train split. The data warnings `launch` and `estimate` give
(imbalance, few samples) are here too, beside the numbers they are about.

numpy only at import (launch and estimate read the warnings); the search module, scikit-learn and Keras inside
the functions that use them.
"""

from __future__ import annotations

import numpy as np

from nascloud.agent.data import Splits
from nascloud.formats import small_data_warning
from nascloud.job import SearchSection

MAJORITY_SHARE = 0.9  # above this, plain accuracy rewards predicting the majority class
BASELINE_EPOCHS = 5  # the image baseline's training: a few epochs, enough to be a fair bar, cheap on a CPU
TABLE_BASELINE = "standardised logistic regression"
IMAGE_BASELINE = f"small fixed CNN (2 conv layers, {BASELINE_EPOCHS} epochs)"


def class_report(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, balanced accuracy (the mean of the classes' recalls), per-class precision, recall, F1 and
    support, and the confusion matrix (rows: the true class, columns: the predicted one), in labels' order.
    A class never predicted has precision 0."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

    classes = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=classes,
                                                                     zero_division=0)
    return {"samples": int(len(y_true)), "accuracy": float(np.mean(y_true == y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "classes": [{"label": label, "precision": float(p), "recall": float(r), "f1": float(f),
                         "support": int(s)} for label, p, r, f, s in zip(labels, precision, recall, f1, support)],
            "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist()}


def report_on_test(model, splits: Splits) -> dict:
    """The Keras model's class report on the test rows (predicted a chunk at a time)."""
    from nascloud.agent.search import predict_test_rows

    predicted = predict_test_rows(lambda x: model.predict(x, verbose=0), splits)
    return class_report(splits.y[splits.test], predicted, splits.labels)


def compared_on(search: SearchSection) -> str:
    """The test metric the search is held to: balanced accuracy when its objective weighs that most, else
    accuracy."""
    terms = search.objective if isinstance(search.objective, dict) else {search.objective: 1.0}
    balanced, plain = terms.get("val_balanced_accuracy", 0.0), terms.get("val_accuracy", 0.0)
    return "balanced_accuracy" if balanced > plain else "accuracy"


def baseline(search: SearchSection, splits: Splits, report: dict) -> dict:
    """The plain model for the task, trained on the train split and scored on the test split, and whether the
    search's best model (its test `report`) beat it on the metric the search is held to."""
    from nascloud.agent.search import predict_test_rows

    if search.task == "structured_data_classification":
        kind, predict = TABLE_BASELINE, _logistic_regression(splits)
    else:
        kind, predict = IMAGE_BASELINE, _small_cnn(splits, search.seed)
    own = class_report(splits.y[splits.test], predict_test_rows(predict, splits), splits.labels)
    metric = compared_on(search)
    margin = report[metric] - own[metric]
    return {"kind": kind, "test_accuracy": own["accuracy"], "balanced_accuracy": own["balanced_accuracy"],
            "compared_on": metric, "margin": margin, "search_beat_it": margin > 0}


def _logistic_regression(splits: Splits):
    """Scaled features, then a logistic regression; returns rows -> one score column per class (a class the
    train split lacks scores 0)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(splits.x_train, splits.y_train)  # a table is in memory anyway (AutoKeras is handed arrays)
    trained = model.classes_

    def predict(x: np.ndarray) -> np.ndarray:
        scores = np.zeros((len(x), len(splits.labels)))
        scores[:, trained] = model.predict_proba(x)
        return scores

    return predict


def _small_cnn(splits: Splits, seed: int):
    """Two small convolutions (32 and 64 filters, each pooled) on normalised pixels, trained a batch at a time
    from the split's rows (a memory-mapped set is never read whole); returns rows -> class scores."""
    import keras

    from nascloud.agent.search import Stream

    classes = len(splits.labels)
    keras.utils.set_random_seed(seed)
    train = Stream(splits, seed).batches(splits.train, shuffle=True)
    normalise = keras.layers.Normalization()
    normalise.adapt(train.map(lambda x, y: x))
    binary = classes == 2  # the stream's targets are then one 0/1 column
    model = keras.Sequential([
        keras.Input(splits.x.shape[1:]), normalise,
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D(padding="same"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D(padding="same"),
        keras.layers.Flatten(),  # not pooled to one value per channel: digits scores 0.96 so, 0.63 pooled
        keras.layers.Dense(1 if binary else classes, activation="sigmoid" if binary else "softmax")])
    model.compile("adam", "binary_crossentropy" if binary else "categorical_crossentropy")
    model.fit(train, epochs=BASELINE_EPOCHS, verbose=0)
    return lambda x: model.predict(x, verbose=0)


# -- data warnings, before anything is spent -------------------------------------------------------------
def data_warnings(search: SearchSection, splits: Splits) -> list[str]:
    """What launch says about the packed data set (its labels and split sizes only; no pixel is read): a
    majority class above MAJORITY_SHARE under plain accuracy, and a train split under SMALL_DATA_SAMPLES."""
    found = []
    counts = np.bincount(splits.y, minlength=len(splits.labels))
    share = counts.max() / counts.sum()
    if share > MAJORITY_SHARE and search.objective == "val_accuracy":
        fixes = ["search.objective: val_balanced_accuracy"] + (
            [] if search.class_weight else ["search.class_weight: balanced"])
        found.append(f"class {splits.labels[int(counts.argmax())]!r} holds {share:.1%} of the samples and "
                     f"search.objective is val_accuracy, which a model predicting only that class scores "
                     f"{share:.3f} on; set {' and '.join(fixes)}")
    found.append(small_data_warning(len(splits.train), "the train split has"))
    return [line for line in found if line]

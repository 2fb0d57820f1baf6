"""The search's objectives (issue 13): a weighted score and the balanced accuracy are the tuner's own
objective (each trial's score, the epoch and the model it keeps), class weighting moves an imbalanced
search, and a bad objective is refused before anything is spent. Three real searches on digits, each
shared by the tests it can prove (module-scoped)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.search import make_bundle, run_agent
from tests.test_hardening_input import cli, one_error, write_job  # noqa: F401  (cli: the in-process CLI fixture)

# Small vanilla CNNs on the 8x8 digits: the Greedy tuner's widths (16 to 512 filters) make models of a few
# hundred to millions of parameters.
SPACE = {"block_type": ["vanilla"], "num_blocks": [1, 1], "num_layers": [1, 2], "kernel_size": [3], "dropout": [0.0]}
WEIGHTS = {"val_accuracy": 0.5, "model_size": 0.5}
# The space's largest model, by hand: two 3x3 convolutions of 512 filters (`valid` padding: 8 -> 6 -> 4, no
# pooling), the 4x4x512 map flattened into the 10-way head.
LARGEST = (9 * 1 * 512 + 512) + (9 * 512 * 512 + 512) + (4 * 4 * 512 * 10 + 10)


def results(url: str, name: str) -> Path:
    return Path(url.removeprefix("file://")) / "results" / name


def trials(project: Path) -> dict[str, dict]:
    """Each trial as KerasTuner recorded it (trial.json) with the agent's own record (epochs' logs, params)."""
    found = {}
    for folder in sorted(project.glob("trial_*")):
        trial = json.loads((folder / "trial.json").read_text())
        found[trial["trial_id"]] = {**trial, **json.loads((folder / "nascloud.json").read_text())}
    return found


def load_model(path: Path):
    from nascloud.agent.runner import quiet_tensorflow

    quiet_tensorflow()
    import autokeras  # noqa: F401  the saved model's custom layers
    import keras

    return keras.models.load_model(path)


@pytest.fixture(scope="module")
def weighted(tmp_path_factory):
    """6 trials of 2 epochs on {val_accuracy: 0.5, model_size: 0.5}, SIGKILLed in the last trial's second
    epoch and resumed from the bucket: the resumed trial is scored on the epochs of both runs."""
    root = tmp_path_factory.mktemp("weighted")
    url = make_bundle(root, "weighted-0a0a0a", objective=WEIGHTS, max_trials=6, epochs=2, space=SPACE)
    killed = run_agent(url, root / "work-0", kill_at="epoch:12")
    resumed = run_agent(url, root / "work-1")
    assert resumed.code == 0, resumed.log
    return {"url": url, "killed": killed, "resumed": resumed, "project": root / "work-1" / "snapshot" / "search",
            "leaderboard": json.loads(results(url, "leaderboard.json").read_text())}


def weighted_score(logs: dict, params: int) -> float:
    return WEIGHTS["val_accuracy"] * logs["val_accuracy"] + WEIGHTS["model_size"] * (1 - math.log(params) / math.log(LARGEST))


def test_the_weighted_score_is_each_trials_score_as_the_tuner_recorded_it(weighted):
    assert json.loads((weighted["project"] / "nascloud_largest.json").read_text()) == {"largest_parameters": LARGEST}
    done = {i: t for i, t in trials(weighted["project"]).items() if t["status"] == "COMPLETED"}
    assert len(done) == 6
    for trial in done.values():
        # KerasTuner gives the objective its direction (another metric defaults to min) and scores the trial
        # on the objective's best epoch: the weighted score computed per epoch, not a re-ranking afterwards.
        assert trial["metrics"]["metrics"]["val_weighted_score"]["direction"] == "max"
        assert trial["score"] == pytest.approx(max(weighted_score(logs, trial["params"]) for logs in trial["logs"]))
    assert weighted["leaderboard"]["objective"] == "val_weighted_score"


def test_a_resumed_trial_is_scored_on_the_epochs_of_both_runs(weighted):
    assert weighted["killed"].code == -9 and "trial 6 starts at epoch 2" in weighted["resumed"].log
    last = trials(weighted["project"])["5"]
    assert len(last["logs"]) == 2 and last["best_step"] in (0, 1)
    assert last["score"] == pytest.approx(max(weighted_score(logs, last["params"]) for logs in last["logs"]))


def test_the_smaller_model_nearly_as_accurate_is_the_one_chosen(weighted):
    done = [t for t in trials(weighted["project"]).values() if t["status"] == "COMPLETED"]
    accuracy = {t["trial_id"]: max(logs["val_accuracy"] for logs in t["logs"]) for t in done}
    most_accurate = max(done, key=lambda t: accuracy[t["trial_id"]])
    chosen = max(done, key=lambda t: t["score"])
    # Ranked by val_accuracy alone (the size term ignored), the most accurate trial would win: it is bigger.
    assert weighted["leaderboard"]["best_trial_id"] == chosen["trial_id"] != most_accurate["trial_id"]
    assert chosen["params"] < most_accurate["params"] and accuracy[chosen["trial_id"]] < accuracy[most_accurate["trial_id"]]
    # The model the search exports is the chosen trial's.
    assert load_model(results(weighted["url"], "best_model.keras")).count_params() == chosen["params"]
    print(f"chosen: trial {chosen['trial_id']}, {chosen['params']} parameters, val_accuracy "
          f"{accuracy[chosen['trial_id']]:.3f}; most accurate: trial {most_accurate['trial_id']}, "
          f"{most_accurate['params']} parameters, val_accuracy {accuracy[most_accurate['trial_id']]:.3f}")


# ---- imbalanced data ---------------------------------------------------------------------------------------

def eights(path: Path) -> Path:
    """Digit 8 against the rest at 1:25, as an .npz a user would give."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rest = np.flatnonzero(digits.target != 8)
    few = np.random.default_rng(0).choice(np.flatnonzero(digits.target == 8), len(rest) // 25, replace=False)
    rows = np.sort(np.concatenate([rest, few]))
    np.savez(path, x=digits.images[rows].astype(np.float32), y=np.where(digits.target[rows] == 8, "eight", "other"))
    return path


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    """The eights searched twice on the same split:
    plain val_accuracy, then class_weight: balanced with val_balanced_accuracy. Each exported model predicts
    the test split here."""
    from nascloud.agent import data
    from nascloud.agent.search import predicted_classes
    from nascloud.job import parse_job

    root = tmp_path_factory.mktemp("imbalanced")
    path = eights(root / "eights.npz")
    splits = data.split(data.load_source(parse_job({"name": "eights", "search": {"data": str(path)}}).search), seed=1)
    eight = splits.labels.index("eight")
    found = {}
    for name, search in {"plain": {}, "balanced": {"class_weight": "balanced", "objective": "val_balanced_accuracy"}}.items():
        (root / name).mkdir()
        url = make_bundle(root / name, f"eights-{name}-0a0a0a", data=str(path), max_trials=2, epochs=3, **search)
        run = run_agent(url, root / name / "work")
        assert run.code == 0, run.log
        model = load_model(results(url, "best_model.keras"))
        test, val = (predicted_classes(model.predict(np.asarray(splits.x[rows]), verbose=0))
                     for rows in (splits.test, splits.val))
        truth = splits.y[splits.test]
        found[name] = {"recall": float(np.mean(test[truth == eight] == eight)), "val_predicted": val,
                       "leaderboard": json.loads(results(url, "leaderboard.json").read_text()),
                       "project": root / name / "work" / "snapshot" / "search"}
    return {"splits": splits, "eight": eight, **found}


def test_class_weighting_and_the_balanced_objective_find_the_minority_plain_accuracy_misses(imbalanced):
    splits, eight = imbalanced["splits"], imbalanced["eight"]
    assert np.sum(splits.y == eight) * 25 <= np.sum(splits.y != eight)  # 1:25
    plain, balanced = imbalanced["plain"]["recall"], imbalanced["balanced"]["recall"]
    print(f"recall of the eights on the test split ({int(np.sum(splits.y[splits.test] == eight))} of them): "
          f"plain val_accuracy {plain:.3f}, class_weight balanced + val_balanced_accuracy {balanced:.3f}")
    assert balanced > plain


def test_the_balanced_accuracy_on_the_validation_split_is_the_tuners_score(imbalanced):
    from sklearn.metrics import balanced_accuracy_score

    balanced, splits = imbalanced["balanced"], imbalanced["splits"]
    best = balanced["leaderboard"]["trials"][0]
    assert balanced["leaderboard"]["objective"] == "val_balanced_accuracy"
    # The exported model is the best trial's best epoch: its balanced accuracy on the validation rows is the score.
    assert best["score"] == pytest.approx(balanced_accuracy_score(splits.y[splits.val], balanced["val_predicted"]))
    for trial in trials(balanced["project"]).values():
        assert trial["metrics"]["metrics"]["val_balanced_accuracy"]["direction"] == "max"


def test_a_streamed_set_is_scored_on_its_whole_validation_split(tmp_path, monkeypatch):
    """The memmap path (a large image set), where the validation rows are a tf.data Dataset: one trial on a
    weighted objective with the balanced accuracy in it, class-weighted."""
    from sklearn.metrics import balanced_accuracy_score

    from nascloud.agent import data, objectives, search as search_module
    from nascloud.agent.runner import _EpochClock
    from nascloud.job import SearchSection

    search = SearchSection(data=str(eights(tmp_path / "eights.npz")), max_trials=1, epochs=2, class_weight="balanced",
                           objective={"val_balanced_accuracy": 0.5, "model_size": 0.5}, space=SPACE)
    splits = data.split(data.load_packed(data.pack_dataset(search, tmp_path / "packed").parent), search.seed)
    monkeypatch.setattr(search_module, "IN_MEMORY_BYTES", 0)  # this small set takes the large sets' path
    assert search_module.streams(search, splits)
    model = search_module.build_auto_model(search, tmp_path / "snap", _EpochClock())
    search_module.fit(model, search, splits)
    project = tmp_path / "snap" / search_module.PROJECT
    [trial] = trials(project).values()
    largest = json.loads((project / objectives.LARGEST_FILE).read_text())["largest_parameters"]
    assert largest == LARGEST - (4 * 4 * 512 * 9 + 9)  # the same space, a one-sigmoid head: 1 unit, not 10
    best = load_model(project / "best_model.keras")
    predicted = search_module.predicted_classes(best.predict(np.asarray(splits.x[splits.val]), verbose=0))
    size = 1 - math.log(trial["params"]) / math.log(largest)
    assert trial["score"] == pytest.approx(0.5 * balanced_accuracy_score(splits.y[splits.val], predicted) + 0.5 * size)


def test_balanced_class_weights_are_scikit_learns():
    from sklearn.utils.class_weight import compute_class_weight

    from nascloud.agent.objectives import class_weights

    y = np.array([0] * 95 + [1] * 5)  # two classes: the one-sigmoid head gets the same weights by index
    assert class_weights(y, 2) == pytest.approx(dict(enumerate(compute_class_weight("balanced", classes=np.arange(2), y=y))))


# ---- refused before anything is spent ----------------------------------------------------------------------

@pytest.mark.parametrize("search, message", [
    ({"objective": "val_f1"}, "search.objective: 'val_f1' is not a metric a classification search produces; use one of "
                              "val_accuracy, val_balanced_accuracy, val_loss"),
    ({"objective": {"val_accuracy": 0.7, "model_size": 0.2}}, "search.objective: the weights must sum to 1, got 0.9"),
    ({"seeds": [1, 2, 1]}, "search: seeds: [1, 2, 1] repeats a seed"),
])
@pytest.mark.parametrize("command", [["estimate"], ["launch", "--dry-run"], ["launch"]])
def test_a_bad_objective_or_seeds_is_one_line_exit_2_before_anything_is_spent(cli, tmp_path, search, message, command):  # noqa: F811
    job = write_job(tmp_path, search=search)
    assert message in one_error(cli(command[0], job, *command[1:]))
    assert not (tmp_path / "bucket").exists()  # no job recorded, nothing launched

"""``facebench evaluate``: predictions made elsewhere, scored against a dataset split, give the
same leaderboard rows as the trained run that made them; every problem of the predictions file is
one line naming the file and the line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from facebench.benchmarks.cli import main
from facebench.benchmarks.evaluate import choose_dataset, evaluate_predictions
from facebench.benchmarks.prediction_csv import read_predictions
from facebench.benchmarks.records import load_predictions, probability_columns
from facebench.benchmarks.report import read_board
from facebench.core.tasks import Target, TaskSpec
from facebench.datamodules.formats import DatasetFormatError

pytestmark = pytest.mark.usefixtures("one_thread")


def write_predictions_csv(path: Path, ids: np.ndarray, probs: np.ndarray, task: TaskSpec, id_column: str = "id") -> Path:
    df = pd.DataFrame(probs.astype(np.float64), columns=probability_columns(task))
    df.insert(0, id_column, ids)
    df.to_csv(path, index=False, float_format="%.9g")   # float32 values read back exactly
    return path


def celeba_choice(root: Path, results: Path, **args) -> object:
    return choose_dataset("celeba", root=str(root), sets={"attributes": ["Male", "Smiling", "Eyeglasses"], **args},
                          results=str(results), name="ext")


@pytest.fixture(scope="module")
def small_celeba(tmp_path_factory) -> Path:
    from synth import synth_celeba_at

    return synth_celeba_at(tmp_path_factory.mktemp("evaluate") / "celeba", n_identities=20, images_per_identity=4,
                           image_size=24, seed=5)


@pytest.fixture(scope="module")
def test_split(small_celeba):
    from facebench.datamodules.base import create_datamodule

    dm = create_datamodule("celeba", root=str(small_celeba), attributes=["Male", "Smiling", "Eyeglasses"])
    dm.setup()
    return dm.task, dm.tables["test"]


def test_labels_and_probabilities_become_the_task_layout(tmp_path, test_split):
    task, table = test_split
    ids = table.sample_ids()
    rng = np.random.default_rng(0)
    probs = rng.random((len(ids), task.n_logits)).astype(np.float32)
    order = rng.permutation(len(ids))   # any row order
    path = write_predictions_csv(tmp_path / "p.csv", ids[order], probs[order], task, id_column="path")
    assert np.array_equal(read_predictions(path, task, ids, split="test", dataset="celeba"), probs)
    labels = pd.DataFrame({"image": [Path(i).name for i in ids], "Male": table.labels[:, 0], "Smiling": ["yes"] * len(ids),
                           "Eyeglasses": table.labels[:, 2]})
    labels.to_csv(tmp_path / "l.csv", index=False)   # bare file names, labels, class names
    got = read_predictions(tmp_path / "l.csv", task, ids, split="test", dataset="celeba")
    assert np.array_equal(got[:, 0], table.labels[:, 0]) and (got[:, 1] == 1).all()


def test_softmax_targets_take_class_columns_or_one_label_column(tmp_path):
    task = TaskSpec((Target("emotion", "multiclass", ("happy", "sad", "neutral")), Target("age", "ordinal", ("young", "old"))))
    ids = ["a.jpg", "b.jpg"]
    (tmp_path / "p.csv").write_text("id,emotion/happy,emotion/sad,emotion/neutral,age\n"
                                    "b.jpg,0.2,0.3,0.5,old\na.jpg,1,0,0,0\n")
    got = read_predictions(tmp_path / "p.csv", task, ids, split="test", dataset="d")
    assert np.allclose(got, [[1, 0, 0, 1, 0], [0.2, 0.3, 0.5, 0, 1]])
    (tmp_path / "bad.csv").write_text("id,emotion/happy,emotion/sad,emotion/neutral,age\na.jpg,0.2,0.3,0.4,old\n"
                                      "b.jpg,1,0,0,0\n")
    with pytest.raises(DatasetFormatError, match=r"bad.csv, line 2: columns emotion/\*: .* sum 1"):
        read_predictions(tmp_path / "bad.csv", task, ids, split="test", dataset="d")


@pytest.mark.parametrize("edit,message", [
    (lambda df: df.iloc[1:], r", line None|have no row"),
    (lambda df: pd.concat([df, df.iloc[[0]].assign(id="elsewhere/nope.jpg")]), r"line \d+: id 'elsewhere/nope.jpg' is not a sample"),
    (lambda df: pd.concat([df, df.iloc[[0]]]), r"line \d+: sample '.*' has a second row \(the first is on line 2\)"),
    (lambda df: df.rename(columns={"Smiling": "Smilng"}), r"line 1: column 'Smilng' names no target .*did you mean 'Smiling'"),
    (lambda df: df.drop(columns=["Male"]), r"line 1: no column for target\(s\) Male"),
    (lambda df: df.assign(Male=[1.5] + [0.5] * (len(df) - 1)), r"line 2: column 'Male': 1.5 is not a probability in \[0, 1\]"),
    (lambda df: df.assign(Male=["x"] * len(df)), r"line 2: column 'Male': 'x' is not a number"),
    (lambda df: df.rename(columns={"id": "name"}), r"line 1: no id column"),
])
def test_every_problem_is_one_line_naming_the_file_and_line(tmp_path, small_celeba, test_split, edit, message, capsys):
    task, table = test_split
    probs = np.full((len(table), task.n_logits), 0.5, dtype=np.float32)
    df = pd.read_csv(write_predictions_csv(tmp_path / "ok.csv", table.sample_ids(), probs, task))
    path = tmp_path / "preds.csv"
    edit(df).to_csv(path, index=False)
    with pytest.raises(DatasetFormatError, match=message) as err:
        read_predictions(path, task, table.sample_ids(), split="test", dataset="celeba")
    assert str(path) in str(err.value)
    code = main(["evaluate", str(path), "--dataset", "celeba", "--root", str(small_celeba), "--set",
                 "attributes=[Male,Smiling,Eyeglasses]", "--results", str(tmp_path / "results"), "--no-report"])
    err_text = capsys.readouterr().err
    assert code == 2 and err_text.count("\n") == 1 and str(path) in err_text and "Traceback" not in err_text


def test_a_finished_run_folder_is_not_replaced_without_force(tmp_path, small_celeba, test_split):
    task, table = test_split
    path = write_predictions_csv(tmp_path / "p.csv", table.sample_ids(), np.full((len(table), 3), 0.3), task)
    choice = celeba_choice(small_celeba, tmp_path / "results")
    run_dir = evaluate_predictions([(path, "test")], choice, "ext_model")
    assert run_dir == tmp_path / "results" / "ext" / "runs" / "ext_model--celeba--s0"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["method"]["name"] == "predictions"
    with pytest.raises(ValueError, match="holds a finished run.*--force"):
        evaluate_predictions([(path, "test")], choice, "ext_model")
    evaluate_predictions([(path, "test")], choice, "ext_model", force=True)
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["input_size"].isna().all() and metrics["params"].isna().all()


@pytest.mark.slow
def test_evaluate_reproduces_the_leaderboard_rows_of_a_trained_resnet18(tmp_path, small_celeba):
    """Acceptance: the val and test predictions of a ResNet-18 run on a CelebA-layout set, scored by
    ``facebench evaluate``, give that run's leaderboard rows (every metric, tuned thresholds too)."""
    suite = {"name": "ev", "results_dir": str(tmp_path / "results"), "seeds": [0],
             "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1},
             "datasets": {"celeba": {"datamodule": "celeba", "args": {
                 "root": str(small_celeba), "batch_size": 16, "num_workers": 0, "attributes": ["Male", "Smiling", "Eyeglasses"]}}},
             "methods": {"resnet18": {"method": "timm", "args": {"backbone": "resnet18", "input_size": 32}}}}
    path = tmp_path / "ev.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["run", str(path), "--in-process"]) == 0
    run_dir = tmp_path / "results" / "runs" / "resnet18--celeba--s0"
    task = TaskSpec.from_dict(yaml.safe_load((run_dir / "task.json").read_text()))
    files = []
    for split in ("val", "test"):
        p = load_predictions(run_dir, split)
        files.append(str(write_predictions_csv(tmp_path / f"{split}.csv", p["ids"], p["probs"], task)))
    assert main(["evaluate", *files, "--split", "val", "test", "--suite", str(path), "--dataset", "celeba",
                 "--method", "resnet18_scored"]) == 0
    board = read_board(tmp_path / "results" / "leaderboard.csv")       # the test and the val split's files
    keys = ["split", "attribute", "class"]
    metrics = [c for c in ("accuracy", "balanced_accuracy", "auroc", "f1", "accuracy@tuned", "threshold@tuned", "ece")
               if c in board.columns]
    trained = board[board["method"] == "resnet18"].set_index(keys)[metrics].sort_index()
    scored = board[board["method"] == "resnet18_scored"].set_index(keys)[metrics].sort_index()
    assert len(trained) == len(scored) == 2 * 3 and "accuracy@tuned" in metrics
    pd.testing.assert_frame_equal(trained, scored, rtol=1e-6)

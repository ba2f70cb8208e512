"""The benchmark runner end to end, through the real ``facebench`` command in subprocesses:
leaderboard, records, W&B offline logging, predict, resume after kill -9, shards, NaN losses,
determinism, DDP on CPU, config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from facebench.benchmarks.suite import SuiteConfigError, load_suite, select

REPO = Path(__file__).resolve().parents[1]


def facebench(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "facebench.benchmarks.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"facebench {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def write_suite(path: Path, results: Path, synth_root: Path, methods: dict, *, seeds=(0,), trainer=None, wandb=False,
                dataset_args=None) -> Path:
    suite = {
        "name": "tiny", "results_dir": str(results), "seeds": list(seeds),
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1, **(trainer or {})},
        "logging": {"wandb": {"enabled": wandb, "mode": "offline"}},
        "datasets": {"synth": {"datamodule": "synthfaces", "args": {
            "root": str(synth_root), "n_identities": 30, "images_per_identity": 4, "render_size": 32,
            "batch_size": 16, "num_workers": 0, **(dataset_args or {})}}},
        "methods": methods,
    }
    path.write_text(yaml.safe_dump(suite))
    return path


TIMM = {"method": "timm", "args": {"backbone": "test_resnet", "input_size": 32}}   # timm's tiny test ResNet
MAJORITY = {"method": "majority", "trainer": {"max_epochs": 1}}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runner") / "synthfaces"


def read_csv(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    df["class"] = df["class"].fillna("")    # empty cells: NaN metrics, or a target's empty class
    return df


def metrics_of(run_dir: Path) -> pd.DataFrame:
    df = read_csv(run_dir / "metrics.csv")
    return df.set_index(["split", "target", "class", "metric"])["value"].sort_index()


@pytest.fixture(scope="module")
def finished_suite(tmp_path_factory, synth_root):
    tmp = tmp_path_factory.mktemp("e2e")
    suite = write_suite(tmp / "suite.yaml", tmp / "results", synth_root, {"majority": MAJORITY, "resnet": TIMM}, wandb=True)
    proc = facebench("run", str(suite))
    return suite, tmp / "results", proc


@pytest.mark.slow
def test_run_writes_leaderboard_records_and_provenance(finished_suite):
    suite, results, proc = finished_suite
    board = read_csv(results / "leaderboard.csv")
    for col in ("method", "dataset", "split", "seed", "attribute", "accuracy", "balanced_accuracy", "auroc",
                "config_hash", "code_hash", "git_commit", "version_torch", "version_lightning", "params", "wall_time_s",
                "train_cpu_s", "train_images", "train_forward_flops"):
        assert col in board.columns, col
    cost = board[(board["method"] == "resnet") & (board["split"] == "test")].iloc[0]
    assert cost["train_cpu_s"] > 0 and cost["train_images"] > 0                 # what the training cost
    assert cost["train_forward_flops"] == pytest.approx(cost["flops_per_image"] * cost["train_images"], rel=1e-5)
    test = board[(board["split"] == "test") & (board["class"] == "")]
    assert set(test["method"]) == {"majority", "resnet"}
    assert test.groupby("method").size().tolist() == [39, 39]          # every rendered attribute
    maj = test[test["method"] == "majority"]
    assert maj["balanced_accuracy"].notna().sum() > 10          # defined where the test split has both classes
    assert maj["balanced_accuracy"].dropna().eq(0.5).all() and maj["auroc"].dropna().eq(0.5).all()
    run = results / "runs" / "resnet--synth--s0"
    for name in ("config.yaml", "status.json", "task.json", "metrics.csv", "predictions_test.npz", "predictions_val.npz",
                 "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert "done     resnet--synth--s0" in proc.stdout and "mean over attributes" in proc.stdout
    # the accuracy in the records is the one computed from the saved predictions
    with np.load(run / "predictions_test.npz") as z:
        probs, labels = z["probs"], z["labels"]
    smiling = list(json.loads((run / "task.json").read_text())["targets"][i]["name"] for i in range(39)).index("Smiling")
    acc = ((probs[:, smiling] >= 0.5) == labels[:, smiling]).mean()
    row = test[(test["method"] == "resnet") & (test["attribute"] == "Smiling")]
    assert row["accuracy"].item() == pytest.approx(acc)


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_report_rebuilds(finished_suite):
    suite, results, _ = finished_suite
    t0 = time.time()
    proc = facebench("run", str(suite))
    assert proc.stdout.count("cached") == 2 and time.time() - t0 < 60
    (results / "leaderboard.csv").unlink()
    facebench("report", str(results))
    assert (results / "leaderboard.csv").is_file()
    for table in ("ranks.csv", "significance.csv", "efficiency.csv", "seeds.csv"):
        assert (results / "tables" / table).is_file(), table


@pytest.mark.slow
def test_wandb_offline_run_holds_the_logged_metrics(finished_suite):
    from facebench.benchmarks.logging_setup import read_offline_wandb

    _, results, _ = finished_suite
    files = list((results / "runs" / "resnet--synth--s0" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    logged = read_offline_wandb(files[0])
    assert len(logged["history"]["val/loss"]) == 2            # one per epoch
    summary = json.loads((results / "runs" / "resnet--synth--s0" / "status.json").read_text())["summary"]
    assert logged["summary"]["test/mean_accuracy"] == pytest.approx(summary["mean_accuracy"])


@pytest.mark.slow
def test_predict_reproduces_the_run_predictions(finished_suite, tmp_path):
    _, results, _ = finished_suite
    run = results / "runs" / "resnet--synth--s0"
    with np.load(run / "predictions_test.npz") as z:
        ids, probs = z["ids"][:3], z["probs"][:3]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    root = Path(cfg["dataset"]["args"]["root"])
    out = tmp_path / "new.csv"
    facebench("predict", "--run", str(run), *[str(root / i) for i in ids], "--out", str(out))
    df = pd.read_csv(out)
    assert len(df) == 3 and df.shape[1] == 1 + 39
    assert np.allclose(df.iloc[:, 1:].to_numpy(), probs, atol=1e-5)


@pytest.mark.slow
def test_resume_after_kill_gives_the_uninterrupted_results(tmp_path, synth_root):
    """Also the determinism check: two CPU runs with the same seed (one of them killed and resumed)
    give identical metrics."""
    methods = {"resnet": TIMM}
    trainer = {"max_epochs": 4}
    ref = write_suite(tmp_path / "ref.yaml", tmp_path / "ref", synth_root, methods, trainer=trainer)
    facebench("run", str(ref))
    ref_metrics = metrics_of(tmp_path / "ref" / "runs" / "resnet--synth--s0")

    killed = write_suite(tmp_path / "killed.yaml", tmp_path / "killed", synth_root, methods, trainer=trainer)
    run_dir = tmp_path / "killed" / "runs" / "resnet--synth--s0"
    proc = subprocess.Popen([sys.executable, "-m", "facebench.benchmarks.cli", "run", str(killed)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"
    assert not (run_dir / "metrics.csv").exists()
    out = facebench("run", str(killed))
    assert "done     resnet--synth--s0" in out.stdout
    pd.testing.assert_series_equal(ref_metrics, metrics_of(run_dir))


@pytest.mark.slow
def test_shards_are_disjoint_and_cover_the_suite(tmp_path, synth_root):
    methods = {"majority": MAJORITY, "aux": {"method": "majority", "init_from": "majority", "trainer": {"max_epochs": 1}}}
    suite_path = write_suite(tmp_path / "s.yaml", tmp_path / "res", synth_root, methods, seeds=(0, 1))
    suite = load_suite(str(suite_path))
    parts = [select(suite.runs, shard=(i, 3)) for i in (1, 2, 3)]
    ids = [{r.run_id for r in p} for p in parts]
    assert set().union(*ids) == {r.run_id for r in suite.runs} and sum(map(len, ids)) == len(suite.runs)
    for p in parts:   # a stage and the stage it starts from are on the same shard
        assert all(r.depends_on is None or r.depends_on in {q.run_id for q in p} for r in p)
    procs = [subprocess.Popen([sys.executable, "-m", "facebench.benchmarks.cli", "run", str(suite_path), "--shard", f"{i}/2"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for i in (1, 2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    writers = {}
    for run in suite.runs:
        st = json.loads((tmp_path / "res" / "runs" / run.run_id / "status.json").read_text())
        assert st["state"] == "done"
        writers[run.run_id] = st["pid"]
    started = [{line.split()[-1] for line in out.splitlines() if line.startswith("[facebench] start")} for out in outs]
    assert not (started[0] & started[1]) and started[0] | started[1] == set(writers)
    assert not (tmp_path / "res" / "leaderboard.csv").exists()     # shards leave the shared report to `facebench report`


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_the_suite_goes_on(tmp_path, synth_root):
    exploding = {"method": "timm", "args": {"backbone": "test_resnet", "input_size": 32, "optimizer": {"name": "SGD", "lr": 1e12},
                                            "scheduler": None}}
    suite = write_suite(tmp_path / "nan.yaml", tmp_path / "nan", synth_root, {"exploding": exploding, "majority": MAJORITY})
    proc = facebench("run", str(suite), check=False)
    assert proc.returncode == 1
    st = json.loads((tmp_path / "nan" / "runs" / "exploding--synth--s0" / "status.json").read_text())
    assert st["state"] == "failed" and "training loss is nan" in st["error"].lower()
    assert json.loads((tmp_path / "nan" / "runs" / "majority--synth--s0" / "status.json").read_text())["state"] == "done"
    assert "FAILED   exploding--synth--s0" in proc.stdout


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_gives_the_single_process_metrics(tmp_path, synth_root):
    # max_epochs 0: both evaluate the same seeded weights, so only the evaluation path differs
    one = write_suite(tmp_path / "one.yaml", tmp_path / "one", synth_root, {"resnet": TIMM}, trainer={"max_epochs": 0})
    two = write_suite(tmp_path / "two.yaml", tmp_path / "two", synth_root, {"resnet": TIMM},
                      trainer={"max_epochs": 0, "devices": 2, "strategy": "ddp"})
    facebench("run", str(one))
    facebench("run", str(two))
    a = metrics_of(tmp_path / "one" / "runs" / "resnet--synth--s0")
    b = metrics_of(tmp_path / "two" / "runs" / "resnet--synth--s0")
    pd.testing.assert_series_equal(a, b, rtol=1e-5)


@pytest.mark.parametrize("patch,message", [
    ({"methods": {"m": {"method": "majority", "argz": {}}}}, "unknown key(s) ['argz'] in methods.m; allowed:"),
    ({"methods": {"m": {"method": "nope"}}}, "unknown method 'nope'; registered methods:"),
    ({"methods": {"m": {"method": "timm", "args": {"backbone_name": "x"}}}}, "unknown option(s) ['backbone_name']; allowed:"),
    ({"datasets": {"d": {"datamodule": "synthfaces", "args": {"n_identity": 3}}}}, "datasets.d: dataset 'synthfaces': unknown option(s) ['n_identity']"),
    ({"trainr": {}}, "unknown key(s) ['trainr'] in the suite; allowed:"),
])
def test_bad_config_names_the_key_and_the_allowed_values(tmp_path, patch, message):
    suite = {"name": "bad", "datasets": {"d": {"datamodule": "synthfaces"}}, "methods": {"m": {"method": "majority"}}}
    suite.update(patch)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(SuiteConfigError) as err:
        load_suite(str(path))
    assert message in str(err.value) and str(path) in str(err.value)
    if "trainr" in message:   # and the command says it in one line, without a traceback
        proc = facebench("run", str(path), check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_equal_weighting_reproduces_the_plain_run(tmp_path, synth_root, monkeypatch):
    """Issue 15: with ``mtl: {weighting: equal}`` a suite run gives today's numbers bit for bit; the
    two run configs differ only in the method key and the new ``mtl`` argument."""
    mcnn = {"method": "mcnn", "args": {"input_size": 32}}
    methods = {"mcnn": mcnn, "mcnn_equal": {"method": "mcnn", "args": {"input_size": 32, "mtl": {"weighting": "equal"}}}}
    suite = write_suite(tmp_path / "s.yaml", tmp_path / "r", synth_root, methods, trainer={"max_epochs": 1})
    monkeypatch.setenv("OMP_NUM_THREADS", "1")    # bitwise: one thread (README, "Reliability")
    facebench("run", str(suite))
    runs = tmp_path / "r" / "runs"
    plain, equal = (np.load(runs / f"{key}--synth--s0" / "predictions_test.npz") for key in methods)
    assert plain.files == equal.files and all(np.array_equal(plain[k], equal[k]) for k in plain.files)
    pd.testing.assert_series_equal(metrics_of(runs / "mcnn--synth--s0"), metrics_of(runs / "mcnn_equal--synth--s0"))
    cfg = {key: yaml.safe_load((runs / f"{key}--synth--s0" / "config.yaml").read_text()) for key in methods}
    flat = {key: pd.json_normalize(c, sep=".").iloc[0].to_dict() for key, c in cfg.items()}
    differing = {k for k in flat["mcnn"].keys() | flat["mcnn_equal"].keys()
                 if flat["mcnn"].get(k) != flat["mcnn_equal"].get(k)}
    assert differing and all(k in ("method_key", "run_id", "method.args.mtl.weighting") for k in differing), differing


@pytest.mark.slow
def test_evaluation_checkpoint_last_evaluates_the_final_epoch(tmp_path, synth_root):
    """``evaluation: {checkpoint: last}`` tests the final epoch's weights instead of the monitored best;
    an unknown value is a config error naming the allowed ones."""
    path = write_suite(tmp_path / "s.yaml", tmp_path / "r", synth_root, {"resnet": TIMM})
    suite = yaml.safe_load(path.read_text())
    suite["evaluation"] = {"checkpoint": "last"}
    path.write_text(yaml.safe_dump(suite))
    facebench("run", str(path))
    run_dir = tmp_path / "r" / "runs" / "resnet--synth--s0"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "done" and status["best_checkpoint"].endswith("last.ckpt")
    suite["evaluation"] = {"checkpoint": "latest"}
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(SuiteConfigError, match="evaluation.checkpoint is 'latest'; expected one of best, last"):
        load_suite(str(path))


def test_last_checkpoint_is_the_final_epoch_even_when_the_monitor_stops_improving(tmp_path):
    """Lightning (>= 2.4) writes ``save_last`` only together with a top-k checkpoint; the runner's
    ``last.ckpt`` must be the final epoch regardless (resume, ``evaluation.checkpoint: last`` and the
    per-network selection, which keeps every network's best weights in it, read it)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from facebench.benchmarks.worker import build_trainer

    class Worsening(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            return self.w(batch["image"]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val/loss", float(self.current_epoch))     # best at epoch 0, worse every epoch after

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return DataLoader([{"image": torch.ones(1)}] * 4, batch_size=2)

        val_dataloader = train_dataloader

    cfg = {"run_id": "t", "seed": 0, "trainer": {"max_epochs": 3, "accelerator": "cpu", "devices": 1},
           "logging": {"wandb": {"enabled": False}}}
    trainer = build_trainer(cfg, tmp_path, ("val/loss", "min"))
    trainer.fit(Worsening())
    epochs = {name: torch.load(tmp_path / "checkpoints" / f"{name}.ckpt", map_location="cpu", weights_only=False)["epoch"]
              for name in ("best", "last")}
    assert epochs == {"best": 0, "last": 2}


def test_force_with_only_reruns_the_named_runs_not_their_earlier_stages(monkeypatch, tmp_path):
    """`--only lnets_anet--celeba--s0 --force` re-runs that stage; the ANet stages it starts from
    come along (they must exist) but are not wiped and retrained."""
    import facebench.benchmarks.runner as runner

    calls = []
    monkeypatch.setattr(runner, "run_one", lambda suite, run, force=False, in_process=False, command="":
                        calls.append((run.run_id, force)) or runner.RunOutcome(run, "done"))
    runner.run_suite("celeba", only=["lnets_anet--celeba--s0"], force=True, results_root=str(tmp_path), report=False)
    assert calls == [("anet_identity--celeba--s0", False), ("anet--celeba--s0", False), ("lnets_anet--celeba--s0", True)]

"""Tests of the identity-pretrained branching network (lightning_modules/branching.py, branching_networks.py,
face_verification.py) and its analyses (benchmarks/analyses/branching.py)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from facebench.core.tasks import Target, TaskSpec
from facebench.benchmarks.analyses import run_analysis
from facebench.benchmarks.analyses.branching import (AssembledBranchingNet, apply_operating_point, read_lfw_pairs,
                                                     select_branches, select_operating_point, sweep_records)
from facebench.lightning_modules.branching import BranchingFineTuneTask, BranchingIdentityTask
from facebench.lightning_modules.branching_networks import FaceIdentityNetwork
from facebench.lightning_modules.face_verification import VerificationPairs, generate_pairs, verification_accuracy
from facebench.lightning_modules.registry import create_method

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL = 32   # input size of the CPU tests: the paper's layers, 1/49 of the pixels of 224x224


def attributes(n: int = 3) -> TaskSpec:
    return TaskSpec.binary_attributes([f"attr{i}" for i in range(n)], name="toy")


def identity_checkpoint(tmp_path: Path, n_ids: int = 5, seed: int = 0) -> Path:
    """A branching_identity checkpoint (state dict file) with non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = BranchingIdentityTask(attributes(), identity_ids=list(range(n_ids)), input_size=SMALL)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model.net(torch.randn(4, 3, SMALL, SMALL))   # BN running statistics move away from their init
    path = tmp_path / f"identity{seed}.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


# ------------------------------------------------------------------------------------------------
# the base network (Fig. 2, sec. 3.1)
# ------------------------------------------------------------------------------------------------
def test_base_network_parameters_and_flops_at_224():
    model = create_method("branching_identity", attributes(), **BranchingIdentityTask.reference_config())
    params = model.parameter_count()
    assert abs(params - 9e6) / 9e6 < 0.15, params                      # "9M free parameters" (10K identities)
    flops = model.flops_per_image()                                     # torch counts 2 flops per multiply-add
    multiply_adds = flops / 2
    assert abs(multiply_adds - 0.9e9) / 0.9e9 < 0.15, multiply_adds     # "0.9 Gflops" = multiply-adds
    assert abs(flops - 0.9e9) / 0.9e9 > 0.5                             # the 2x convention does not match the paper
    convs = model.net.named_convolutions()
    assert list(convs) == [f"conv{k}" for k in range(1, 25)]            # 24 convolutions without the shortcuts
    assert convs["conv1"].kernel_size == (7, 7) and convs["conv1"].stride == (2, 2) and convs["conv1"].out_channels == 32
    assert convs["conv24"].out_channels == 320
    for name in ("conv17", "conv19", "conv21", "conv22"):
        assert name in model.net.steps


def test_spatial_sizes_follow_section_3_1():
    net = FaceIdentityNetwork(7).eval()
    shapes = {}
    x = torch.zeros(1, 3, 224, 224)
    for name in net.step_names:
        x = net.steps[name](x)
        if torch.is_tensor(x):
            shapes[name] = tuple(x.shape[1:])
    assert shapes["conv1"] == (32, 56, 56)                  # 7x7/2 + 2x2 max-pool: 56x56
    assert shapes["conv5"] == (128, 28, 28) and shapes["conv7"] == (256, 14, 14)
    assert shapes["conv19"] == (256, 14, 14)                # stage (d) at 14x14
    d_reduce = net.steps["conv18"].conv
    assert (d_reduce.in_channels, d_reduce.out_channels) == (256, 128)  # 1x1 -> 128, 3x3 -> 256
    assert shapes["conv21"] == (512, 7, 7) and shapes["conv23"] == (512, 7, 7)
    assert shapes["bottleneck320"] == (320,) and shapes["fc"] == (7,)
    assert isinstance(net.steps["conv21"].shortcut, torch.nn.Conv2d) and net.steps["conv21"].shortcut.stride == (2, 2)


def test_identity_loss_uses_training_identities_only():
    model = BranchingIdentityTask(attributes(), identity_ids=[10, 3, 7], input_size=SMALL)
    assert model.identity_classes(torch.tensor([3, 7, 10, 5, -1])).tolist() == [0, 1, 2, -1, -1]
    logits = torch.zeros(2, 3, requires_grad=True)
    loss = model.compute_loss(logits, {"identity": torch.tensor([99, -1])})
    assert loss.item() == 0.0
    with pytest.raises(NotImplementedError, match="identities"):
        model.probabilities({"image": torch.zeros(1, 3, SMALL, SMALL)})


# ------------------------------------------------------------------------------------------------
# fine-tuning from a depth (sec. 3.2)
# ------------------------------------------------------------------------------------------------
class _Batches(torch.utils.data.Dataset):
    def __init__(self, task: TaskSpec, n: int = 16):
        g = torch.Generator().manual_seed(1)
        self.images = torch.randn(n, 3, SMALL, SMALL, generator=g)
        self.labels = torch.randint(0, 2, (n, task.n_label_slots), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "index": torch.tensor(i), "identity": torch.tensor(0)}


def test_frozen_layers_unchanged_after_fine_tuning(tmp_path):
    ckpt = identity_checkpoint(tmp_path)
    identity = torch.load(ckpt)["state_dict"]
    task = attributes()
    model = create_method("branching", task, branch_from="conv19", init_checkpoint=str(ckpt), input_size=SMALL,
                          optimizer={"name": "SGD", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3})
    frozen_steps = model.net.step_names[:model.net.step_index("conv19")]
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.split(".")[2] in frozen_steps}
    upper = {k: v.clone() for k, v in model.state_dict().items() if k.split(".")[2] not in frozen_steps}
    assert frozen and all(torch.equal(v, identity[k]) for k, v in frozen.items())           # trunk = identity network
    assert not torch.equal(upper["net.steps.conv19.conv.weight"], identity["net.steps.conv19.conv.weight"])  # re-initialised
    # trainable parameters (Fig. 4) = exactly the steps from conv19 up
    expected = sum(p.numel() for n in model.net.step_names[model.net.step_index("conv19"):] for p in model.net.steps[n].parameters())
    assert model.parameter_count(trainable_only=True) == expected < model.parameter_count()
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, torch.utils.data.DataLoader(_Batches(task), batch_size=4))
    after = model.state_dict()
    for k, v in frozen.items():   # weights and BN running statistics
        assert torch.equal(after[k], v), k
    changed = [k for k, v in upper.items() if v.is_floating_point() and not torch.equal(after[k], v)]
    assert "net.steps.conv19.conv.weight" in changed and "net.steps.fc.weight" in changed


def test_init_checkpoint_of_another_architecture_is_refused(tmp_path):
    other = BranchingIdentityTask(attributes(), identity_ids=[0, 1], input_size=SMALL, stages=[[64, 1, 1], [128, 9, 2]])
    path = tmp_path / "other.pt"
    torch.save({"state_dict": other.state_dict()}, path)
    with pytest.raises(ValueError, match="not a branching_identity network"):
        BranchingFineTuneTask(attributes(), branch_from="conv19", init_checkpoint=str(path), input_size=SMALL)
    with pytest.raises(ValueError, match="unknown layer 'conv99'"):
        BranchingFineTuneTask(attributes(), branch_from="conv99", input_size=SMALL)


def test_assembled_model_matches_separate_branches(tmp_path):
    ckpt = identity_checkpoint(tmp_path)
    task = TaskSpec((Target("gender"), Target("age", "multiclass", classes=("young", "mid", "old")), Target("smile"),
                     Target("ethnicity", "multilabel", classes=("a", "b", "c"))), name="mixed")
    branches = []
    for i, point in enumerate(("conv17", "conv22", "fc")):
        torch.manual_seed(10 + i)
        b = BranchingFineTuneTask(task, branch_from=point, init_checkpoint=str(ckpt), input_size=SMALL, init_std=None)
        with torch.no_grad():   # stand-in for fine-tuning: random upper weights and BN statistics
            for name in b.net.step_names[b.branch_index:]:
                for m in b.net.steps[name].modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2.0), m.weight.normal_(1, 0.2)
        branches.append(b.eval())
    chosen = [["age"], ["ethnicity", "gender"], ["smile"]]
    assembled = AssembledBranchingNet(branches, chosen).eval()
    assert assembled.task.names == ("age", "ethnicity", "gender", "smile")
    calls = []
    assembled.trunk.steps["conv1"].register_forward_hook(lambda *a: calls.append(1))
    image = torch.randn(3, 3, SMALL, SMALL)
    with torch.no_grad():
        out = assembled(image)
        separate = []
        for b, names in zip(branches, chosen):
            full = b(image)
            separate += [full[:, task.logit_slices[task.names.index(n)]] for n in names]
    assert len(calls) == 1                                   # the trunk runs once per image
    assert out.shape == (3, assembled.task.n_logits) == (3, 3 + 3 + 1 + 1)
    torch.testing.assert_close(out, torch.cat(separate, 1), rtol=1e-5, atol=1e-5)
    # the assembled model holds the trunk once plus each branch's own layers
    n_params = sum(p.numel() for p in assembled.parameters())
    assert n_params < sum(b.parameter_count() for b in branches)
    # branches from different identity networks cannot share a trunk
    foreign = BranchingFineTuneTask(task, branch_from="fc", init_checkpoint=str(identity_checkpoint(tmp_path, seed=1)),
                                    input_size=SMALL).eval()
    with pytest.raises(ValueError, match="same identity network"):
        AssembledBranchingNet([branches[0], foreign])


# ------------------------------------------------------------------------------------------------
# face verification (sec. 4.2)
# ------------------------------------------------------------------------------------------------
def test_generated_pairs_are_balanced_identity_disjoint_and_deterministic():
    ids = np.repeat(np.arange(24), 5)
    pairs = generate_pairs(ids, n_folds=10, pairs_per_fold=7, seed=3)
    again = generate_pairs(ids, n_folds=10, pairs_per_fold=7, seed=3)
    assert np.array_equal(pairs.a, again.a) and np.array_equal(pairs.b, again.b)
    assert not np.array_equal(pairs.a, generate_pairs(ids, n_folds=10, pairs_per_fold=7, seed=4).a)
    assert sorted(np.unique(pairs.fold)) == list(range(10))
    for f in range(10):
        sel = pairs.fold == f
        assert pairs.same[sel].sum() == (~pairs.same[sel]).sum() == 7
    assert np.array_equal(ids[pairs.a] == ids[pairs.b], pairs.same)
    fold_ids = [set(ids[pairs.a[pairs.fold == f]]) | set(ids[pairs.b[pairs.fold == f]]) for f in range(10)]
    assert all(not (fold_ids[i] & fold_ids[j]) for i in range(10) for j in range(i + 1, 10))
    few = generate_pairs(np.repeat(np.arange(6), 3), n_folds=10)        # 6 identities -> 3 folds of 2
    assert len(np.unique(few.fold)) == 3
    with pytest.raises(ValueError, match="at least 4 identities"):
        generate_pairs(np.array([0, 0, 1, 1]))


def test_verification_threshold_comes_from_the_other_folds():
    # one feature dimension: similarity grows with the angle's cosine; fold 0 alone would prefer another threshold
    rng = np.random.default_rng(0)
    n = 400
    fold = np.repeat(np.arange(4), n // 4)
    same = np.tile(np.r_[np.ones(50, bool), np.zeros(50, bool)], 4)
    sim = np.where(same, rng.uniform(0.4, 1.0, n), rng.uniform(-1.0, 0.6, n))
    sim[fold == 0] -= 0.3                                               # a shifted fold
    angle = np.arccos(np.clip(sim, -1, 1))
    feats = np.concatenate([np.ones((n, 1)) * [[1.0, 0.0]], np.stack([np.cos(angle), np.sin(angle)], 1)])
    pairs = VerificationPairs(np.arange(n), np.arange(n) + n, same, fold)
    res = verification_accuracy(feats, pairs)
    own_optimum = []
    for f in range(4):
        train, test = fold != f, fold == f
        t = res["thresholds"][f]
        best_train = max(((sim[train] >= c) == same[train]).mean() for c in np.unique(sim[train]))
        assert ((sim[train] >= t) == same[train]).mean() == pytest.approx(best_train)   # best on the other folds
        assert res["fold_accuracies"][f] == pytest.approx(((sim[test] >= t) == same[test]).mean())
        own_optimum.append(max(((sim[test] >= c) == same[test]).mean() for c in np.unique(sim[test])))
    assert res["fold_accuracies"][0] < own_optimum[0] - 0.05           # the shifted fold does not choose its own
    assert res["accuracy"] == pytest.approx(np.mean(res["fold_accuracies"]))
    assert res["std"] == pytest.approx(np.std(res["fold_accuracies"], ddof=1))
    # separable identities -> perfect verification; random features -> chance
    ids = np.repeat(np.arange(12), 4)
    centres = rng.normal(size=(12, 16))
    clean = centres[ids] + 0.01 * rng.normal(size=(len(ids), 16))
    assert verification_accuracy(clean, generate_pairs(ids, 6, 20))["accuracy"] == 1.0
    noise = verification_accuracy(rng.normal(size=(len(ids), 16)), generate_pairs(ids, 6, 20))["accuracy"]
    assert 0.25 < noise < 0.75


def test_lfw_pairs_file(tmp_path):
    paths = [f"lfw/{n}/{n}_{i:04d}.jpg" for n, k in (("Ann_A", 3), ("Bob_B", 2), ("Cy_C", 1)) for i in range(1, k + 1)]
    text = "2\t1\nAnn_A\t1\t2\nBob_B\t1\tCy_C\t1\nAnn_A\t2\t3\nAnn_A\t1\tBob_B\t2\n"
    (tmp_path / "pairs.txt").write_text(text)
    pairs = read_lfw_pairs(tmp_path / "pairs.txt", paths)
    assert pairs.a.tolist() == [0, 3, 1, 0] and pairs.b.tolist() == [1, 5, 2, 4]
    assert pairs.same.tolist() == [True, False, True, False] and pairs.fold.tolist() == [0, 0, 1, 1]
    (tmp_path / "bad.txt").write_text(text.replace("Ann_A\t2\t3", "Ann_A\t2\t9"))
    with pytest.raises(ValueError, match=r"bad.txt, line 4: image Ann_A_0009 is not among"):
        read_lfw_pairs(tmp_path / "bad.txt", paths)
    (tmp_path / "short.txt").write_text(text.replace("Bob_B\t1\tCy_C\t1", "Bob_B\t1\tCy_C"))
    with pytest.raises(ValueError, match=r"short.txt, line 3: expected 'name1 i name2 j'"):
        read_lfw_pairs(tmp_path / "short.txt", paths)


# ------------------------------------------------------------------------------------------------
# multi-target ethnicity operating point (sec. 4.7)
# ------------------------------------------------------------------------------------------------
def test_operating_point_from_validation_applied_to_test(tmp_path):
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = (rng.random((n, 4)) < [0.5, 0.3, 0.2, 0.1]).astype(int)
        labels[0, 2] = -1
        scores = np.clip(labels * 0.35 + rng.random((n, 4)) * 0.7, 0, 1).astype(np.float32)   # records hold float32
        return scores, labels

    (sv, yv), (st, yt) = split(2000), split(2000)
    th = select_operating_point(sv, yv, target_fpr=0.01)
    for c in range(4):
        known = yv[:, c] >= 0
        neg, pos = sv[known & (yv[:, c] == 0), c], sv[known & (yv[:, c] == 1), c]
        assert (neg >= th[c]).mean() <= 0.01                              # the FPR on validation is met ...
        lower = np.unique(sv[known & (sv[:, c] < th[c]), c])
        allowed = lower[[(neg >= t).mean() <= 0.01 for t in lower]]
        assert all((pos >= t).mean() <= (pos >= th[c]).mean() for t in allowed)   # ... with the best TPR
    res = apply_operating_point(st, yt, th)
    positive = st >= th
    assert res["fpr"] == pytest.approx((positive & (yt == 0)).sum() / (yt == 0).sum())
    assert res["tpr"] == pytest.approx((positive & (yt == 1)).sum() / (yt == 1).sum())
    assert res["unlabelled"] == pytest.approx((~positive.any(1)).mean())
    assert res["fpr"] < 0.03 and 0 < res["tpr"] < 1
    # the analysis on a run's records: a multi-label ethnicity target next to a binary one
    task = TaskSpec((Target("Male"), Target("ethnicity", "multilabel", classes=("a", "b", "c", "d"))))
    (tmp_path / "task.json").write_text(task.to_json())
    for name, (scores, labels) in {"val": (sv, yv), "test": (st, yt)}.items():
        np.savez(tmp_path / f"predictions_{name}.npz", probs=np.c_[rng.random(len(scores)), scores],
                 labels=np.c_[rng.integers(0, 2, len(scores)), labels], index=np.arange(len(scores)))
    assert run_analysis("operating-point", [str(tmp_path), "--target-fpr", "0.01", "--out", str(tmp_path / "op.json")]) == 0
    saved = json.loads((tmp_path / "op.json").read_text())
    assert list(saved) == ["ethnicity"]
    assert saved["ethnicity"]["tpr"] == pytest.approx(res["tpr"]) and saved["ethnicity"]["unlabelled"] == pytest.approx(res["unlabelled"])


# ------------------------------------------------------------------------------------------------
# the depth sweep, selection and assembly end to end (runner, records, analysis)
# ------------------------------------------------------------------------------------------------
def _fake_run(root: Path, branch: str, values: dict[str, float], params: int) -> None:
    run = root / "runs" / f"b[branch_from={branch}]--d--s0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"method": {"name": "branching", "args": {"branch_from": branch}}}))
    (run / "status.json").write_text(json.dumps({"state": "done", "best_checkpoint": f"/ckpt/{branch}.ckpt"}))
    rows = [{"dataset": "d", "seed": 0, "split": s, "target": t, "class": "", "metric": "accuracy", "value": v + (s == "test"),
             "trainable_params": params} for t, v in values.items() for s in ("val", "test")]
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)


def test_branch_selection_picks_best_validation_depth(tmp_path):
    _fake_run(tmp_path, "conv19", {"emotion": 0.68, "gender": 0.94}, 3_000_000)
    _fake_run(tmp_path, "conv22", {"emotion": 0.34, "gender": 0.95}, 1_000_000)
    _fake_run(tmp_path, "fc", {"emotion": 0.44, "gender": 0.95}, 642)
    table = select_branches(sweep_records(tmp_path), "accuracy", "val")
    chosen = table[table["chosen"]].set_index("target")["branch_from"].to_dict()
    assert chosen == {"emotion": "conv19", "gender": "fc"}                  # tie -> the deeper branch
    assert run_analysis("branch-selection", [str(tmp_path), "--out", str(tmp_path / "grid.csv")]) == 0
    assert pd.read_csv(tmp_path / "grid.csv")["chosen"].sum() == 2
    info = json.loads((tmp_path / "grid_info.json").read_text())          # every --out file gets its provenance
    assert info["analysis"] == "branch-selection" and info["command"].startswith("facebench analyze branch-selection")
    assert {"git_commit", "versions", "created"} <= set(info)


@pytest.mark.slow
def test_suite_identity_then_branch_sweep_then_assembly(tmp_path):
    from facebench.benchmarks.runner import run_suite
    from synth import synth_celeba_at

    root = synth_celeba_at(tmp_path / "synth", n_identities=40, images_per_identity=2, image_size=40, seed=1)
    suite = {
        "name": "branching_test", "results_dir": str(tmp_path / "results"), "seeds": [0],
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "log_every_n_steps": 1},
        "datasets": {"synth": {"datamodule": "celeba", "args": {"root": str(root), "batch_size": 16, "num_workers": 0,
                                                                "attributes": ["Male", "Smiling", "Eyeglasses"]}}},
        "methods": {
            "identity": {"method": "branching_identity",
                         "args": {"input_size": SMALL, "verification_folds": 2, "verification_pairs": 5,
                                  "scheduler": {"name": "StepLR", "step_size": 2, "gamma": 0.25, "interval": "step"}}},
            "branch": {"method": "branching", "init_from": "identity", "args": {"input_size": SMALL},
                       "grid": {"branch_from": ["conv21", "fc"]}},
        },
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    outcomes = run_suite(str(path), in_process=True, report=False)
    assert [o.state for o in outcomes] == ["done"] * 3, [o.message for o in outcomes]
    runs = tmp_path / "results" / "runs"
    ident = pd.read_csv(runs / "identity--synth--s0" / "metrics.csv")
    assert set(ident["metric"]) >= {"verification_accuracy", "verification_accuracy_std"}
    assert set(ident["target"]) == {"identity"}
    metrics = pd.read_csv(runs / "branch[branch_from=fc]--synth--s0" / "metrics.csv")
    assert metrics["trainable_params"].iloc[0] == 3 * 321                  # Fig. 4: only the new fc is learned
    assert {"Male", "Smiling", "Eyeglasses"} <= set(metrics["target"])
    out = tmp_path / "assembled.pt"
    assert run_analysis("branch-selection", [str(tmp_path / "results"), "--assemble", str(out)]) == 0
    saved = torch.load(out, weights_only=False)
    assert sorted(t["name"] for t in saved["task"]["targets"]) == ["Eyeglasses", "Male", "Smiling"]
    res = tmp_path / "verification.json"
    ckpt = runs / "identity--synth--s0" / "checkpoints" / "best.ckpt"
    assert run_analysis("face-verification", ["--checkpoint", str(ckpt), "--dataset", "celeba", "--root", str(root),
                                              "--set", "num_workers=0", "--folds", "2", "--out", str(res)]) == 0
    assert 0.0 <= json.loads(res.read_text())["accuracy"] <= 1.0

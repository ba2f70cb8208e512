"""Tests of the semantic-features CNN, its shape regression and the first-layer similarity analysis
(lightning_modules/semantic_cnn.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from facebench.core.tasks import TaskSpec, Target
from facebench.benchmarks.analyses import run_analysis
from facebench.benchmarks.analyses.semantic_cnn import filter_similarity, first_layer_filters
from facebench.lightning_modules.registry import create_method
from facebench.lightning_modules.semantic_cnn import SemanticFeaturesCNN, SemanticShapeCNN, class_indicators
from facebench.lightning_modules.semantic_cnn_networks import LocalContrastNorm, PixelStandardize, SemanticCNN, gaussian_window
from facebench.lightning_modules.shape_model import PCAShapeModel, fit_shape_model, shape_metrics

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CELEBA = DATA / "celeba_subset"
TINY = {"conv_channels": [4, 4, 8], "fc_units": 16}   # the paper's layout at toy width (CPU tests)


pytestmark = pytest.mark.usefixtures("one_thread")


def mixed_task() -> TaskSpec:
    return TaskSpec((Target("emotion", "multiclass", classes=tuple("ABCDEFG")), Target("Male"), Target("Eyeglasses"),
                     Target("age", "ordinal", classes=("0-19", "20-39", "40+"))), name="mixed")


def mixed_labels(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, 7, (n,), generator=g), torch.randint(0, 2, (n,), generator=g),
                        torch.randint(0, 2, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)], dim=1)


# ------------------------------------------------------------------------------------------------
# network shapes
# ------------------------------------------------------------------------------------------------
def test_default_network_matches_section_4_1_1():
    model = create_method("semantic_cnn", mixed_task())
    assert (model.image_size, model.in_chans) == (48, 1)
    net = model.networks[0]
    sizes, x = [], torch.zeros(2, 1, 48, 48)
    for block in net.blocks:
        conv_out = F.relu(block.conv(x))
        x = block(x)
        sizes.append((tuple(conv_out.shape[1:]), tuple(x.shape[1:])))
    # conv 5x5x64 -> 44x44, LCN + 3x3/2 pool -> 22x22, conv 5x5x64 -> 18x18, conv 4x4x128 -> 15x15
    assert sizes == [((64, 44, 44), (64, 22, 22)), ((64, 18, 18), (64, 18, 18)), ((128, 15, 15), (128, 15, 15))]
    assert [type(b.lcn).__name__ for b in net.blocks] == ["LocalContrastNorm", "Identity", "Identity"]
    assert (net.fc.in_features, net.fc.out_features) == (128 * 15 * 15, 3072)
    assert net.fc_dropout.p == pytest.approx(0.2)
    assert model(torch.randn(3, 1, 48, 48)).shape == (3, mixed_task().n_logits)


@pytest.mark.parametrize("args,channels,features", [
    ({"depth": 1}, [64], (64, 22, 22)),
    ({"depth": 2}, [64, 64], (64, 18, 18)),
    ({"depth": 5}, [64, 64, 128, 128, 128], (128, 9, 9)),
    ({"width_multiplier": 0.5}, [32, 32, 64], (64, 15, 15)),
    ({"depth": 4, "width_multiplier": 2.0}, [128, 128, 256, 256], (256, 12, 12)),
    ({"lcn_after": None, "pool_after": None}, [64, 64, 128], (128, 37, 37)),
    ({"lcn_after": 2, "pool_after": 2}, [64, 64, 128], (128, 17, 17)),
    ({"lcn_after": [1, 3], "pool_after": 3}, [64, 64, 128], (128, 18, 18)),
    ({"conv_dropout": 0.3, "fc_dropout": 0.5}, [64, 64, 128], (128, 15, 15)),
])
def test_swept_configurations(args, channels, features):
    net = SemanticCNN(1, 48, 7, fc_units=8, **args)
    assert [b.conv.out_channels for b in net.blocks] == channels
    assert net.feature_shape == features
    assert net.features(torch.zeros(2, 1, 48, 48)).shape[1:] == features
    assert net(torch.randn(2, 1, 48, 48)).shape == (2, 7)
    if "conv_dropout" in args:
        assert all(b.dropout.p == 0.3 for b in net.blocks) and net.fc_dropout.p == 0.5


@pytest.mark.parametrize("args,message", [
    ({"lcn_after": 4}, "lcn_after"),
    ({"pool_after": [0]}, "pool_after"),
    ({"depth": 20, "pool_after": None}, "smaller than its kernel"),
    ({"fc_dropout": 1.0}, "fc_dropout"),
    ({"conv_channels": [8, 8], "kernel_sizes": [5]}, "equal length"),
])
def test_bad_configurations_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        SemanticCNN(1, 48, 7, **args)


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="unknown option"):
        create_method("semantic_cnn", mixed_task(), n_layers=3)


# ------------------------------------------------------------------------------------------------
# local contrast normalisation
# ------------------------------------------------------------------------------------------------
def lcn_reference(x: np.ndarray, window: np.ndarray, eps: float) -> np.ndarray:
    """Jarrett et al.'s LCN written out with loops: windows cut at the border and renormalised."""
    b_, c_, h_, w_ = x.shape
    r = window.shape[0] // 2

    def local_mean(img: np.ndarray) -> np.ndarray:   # img [C, H, W] -> [H, W]
        out = np.zeros((h_, w_))
        for j in range(h_):
            for k in range(w_):
                num = mass = 0.0
                for p in range(-r, r + 1):
                    for q in range(-r, r + 1):
                        if 0 <= j + p < h_ and 0 <= k + q < w_:
                            num += window[p + r, q + r] * img[:, j + p, k + q].mean()
                            mass += window[p + r, q + r]
                out[j, k] = num / mass
        return out

    out = np.empty_like(x)
    for b in range(b_):
        v = x[b] - local_mean(x[b])
        sigma = np.sqrt(local_mean(v * v))
        out[b] = v / np.maximum(np.maximum(sigma, sigma.mean()), eps)
    return out


def test_gaussian_window():
    w = gaussian_window(5, 1.5)
    r = torch.arange(5.0) - 2
    expected = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * 1.5 ** 2))
    assert torch.allclose(w, expected / expected.sum(), atol=1e-7)
    with pytest.raises(ValueError, match="odd"):
        gaussian_window(4, 1.0)


def test_lcn_matches_reference_computation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8) * torch.linspace(0.5, 3.0, 8) + torch.linspace(-2, 2, 7)[:, None]
    lcn = LocalContrastNorm(kernel_size=5, sigma=1.5)
    ref = lcn_reference(x.double().numpy(), lcn.window.double().numpy(), lcn.eps)
    assert np.allclose(lcn(x).numpy(), ref, atol=1e-5)


def test_lcn_is_contrast_invariant_and_safe_on_dead_units():
    torch.manual_seed(1)
    lcn = LocalContrastNorm()
    x = torch.randn(2, 4, 20, 20)
    assert torch.allclose(lcn(x), lcn(5.0 * x + 3.0), atol=1e-4)   # subtractive + divisive: gain and offset go
    dead = torch.zeros(1, 4, 20, 20, requires_grad=True)           # a map of dead ReLUs: no NaN gradient
    lcn(dead).sum().backward()
    assert torch.isfinite(dead.grad).all()


# ------------------------------------------------------------------------------------------------
# training set-up
# ------------------------------------------------------------------------------------------------
def test_linear_lr_schedule_goes_from_0_0025_to_0_001_over_50_epochs():
    model = SemanticFeaturesCNN(mixed_task(), **TINY)
    cfg = model.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] > 0
    assert cfg["lr_scheduler"]["interval"] == "epoch"
    lrs = []
    for _ in range(60):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.0025)
    assert lrs[25] == pytest.approx(0.0025 - 25 * (0.0015 / 50))
    assert lrs[50] == pytest.approx(0.001) and lrs[59] == pytest.approx(0.001)
    assert np.allclose(np.diff(lrs[:51]), -0.0015 / 50)
    assert model.monitor == ("val/mean_accuracy", "max")


def test_per_task_and_joint_output_layouts():
    task = mixed_task()
    joint = SemanticFeaturesCNN(task, **TINY)
    per_task = SemanticFeaturesCNN(task, per_task_networks=True, **TINY)
    assert len(joint.networks) == 1 and joint.networks[0].out.out_features == task.n_logits
    assert [n.out.out_features for n in per_task.networks] == [t.n_logits for t in task.targets]
    x = torch.randn(5, 1, 48, 48)
    per_task.eval()
    before = per_task(x)
    assert before.shape == joint(x).shape == (5, task.n_logits)
    with torch.no_grad():   # network i feeds exactly target i's slice
        per_task.networks[3].out.bias += 1.0
    delta = per_task(x) - before
    for i, s in enumerate(task.logit_slices):
        assert torch.allclose(delta[:, s], torch.full_like(delta[:, s], 1.0 if i == 3 else 0.0), atol=1e-5)


def test_joint_sigmoid_over_all_classes():
    task = mixed_task()
    model = SemanticFeaturesCNN(task, sigmoid_all_classes=True, **TINY)
    labels = mixed_labels(6)
    labels[0, 0] = -1   # a missing emotion label
    logits = torch.randn(6, task.n_logits)
    target, valid = class_indicators(task, labels)
    assert target[1, :7].sum() == 1 and target[1, int(labels[1, 0])] == 1
    assert not valid[0, :7].any() and valid[0, 7:].all()
    soft = torch.zeros(6, 7)
    soft[1:, 2:4] = 0.5   # rater distributions; image 0 has none (all zero)
    soft_target, soft_valid = class_indicators(task, labels, {"emotion": soft})
    assert not soft_valid[0, :7].any() and soft_valid[1:, :7].all() and torch.equal(soft_target[3, :7], soft[3])
    expected = F.binary_cross_entropy_with_logits(logits[valid], target[valid])
    assert model.compute_loss(logits, {"label": labels}) == pytest.approx(float(expected), rel=1e-5)
    probs = model.probabilities({"image": None}, logits)
    assert torch.allclose(probs[:, :7].sum(1), torch.ones(6)) and torch.allclose(probs[:, 7], torch.sigmoid(logits[:, 7]))


def test_one_batch_overfit_halves_the_loss():
    torch.manual_seed(0)
    task = mixed_task()
    model = SemanticFeaturesCNN(task, fc_dropout=0.0, optimizer={"name": "SGD", "lr": 0.01, "momentum": 0.9},
                                conv_channels=[8, 8, 16], fc_units=64)
    batch = {"image": torch.randn(16, 1, 48, 48), "label": mixed_labels(16, seed=1)}
    opt = model.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(40):
        loss = model.compute_loss(model.logits(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2, losses


def test_same_seed_gives_the_same_first_layer_for_any_task():
    """The premise of the paper's index-wise first-layer comparison (Figure 16): joint, per-task and
    shape networks of one seed start from the same first layer."""
    first = lambda model: [net.blocks[0].conv.weight for net in model.networks]  # noqa: E731
    torch.manual_seed(3)
    joint = first(SemanticFeaturesCNN(mixed_task(), **TINY))
    torch.manual_seed(3)
    per_task = first(SemanticFeaturesCNN(TaskSpec.binary_attributes(["Smiling", "Male"]), per_task_networks=True, **TINY))
    torch.manual_seed(3)
    shape = first(SemanticShapeCNN(mixed_task(), n_landmarks=5, shape_components=3, **TINY))
    assert len(per_task) == 2 and all(torch.equal(joint[0], w) for w in per_task + shape)
    torch.manual_seed(4)
    assert not torch.equal(joint[0], first(SemanticFeaturesCNN(mixed_task(), **TINY))[0])


def test_pixel_standardize():
    torch.manual_seed(0)
    images = torch.randn(40, 1, 6, 6) * torch.linspace(0.5, 2, 6) + 3.0
    layer = PixelStandardize(1, 6)
    assert torch.allclose(layer(images), images)   # identity before fitting
    layer.fit(images[i:i + 16] for i in range(0, 40, 16))
    out = layer(images)
    assert torch.allclose(out.mean(0), torch.zeros(1, 6, 6), atol=1e-5)
    assert torch.allclose(out.std(0, unbiased=False), torch.ones(1, 6, 6), atol=1e-3)


# ------------------------------------------------------------------------------------------------
# shape regression (Section 4.2.6)
# ------------------------------------------------------------------------------------------------
def random_shapes(n: int, k: int = 12, rank: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shapes = (mean + rank-``rank`` deformation) turned counter-clockwise on screen by a known
    angle, scaled and shifted (x right, y down). Returns (landmarks [N, K, 2], angles in degrees)."""
    rng = np.random.default_rng(seed)
    mean = np.stack([np.cos(np.linspace(0, 2 * np.pi, k, endpoint=False)),
                     1.3 * np.sin(np.linspace(0, 2 * np.pi, k, endpoint=False))], 1)
    # deformation modes orthogonal to the mean's translation, scale and rotation: they change the
    # shape, not the pose, so the known angle is the shape's in-plane angle
    pose = np.stack([np.tile([1.0, 0.0], k), np.tile([0.0, 1.0], k), mean.ravel(), np.stack([-mean[:, 1], mean[:, 0]], 1).ravel()])
    basis = np.linalg.qr(pose.T)[0]
    modes = rng.normal(size=(rank, 2 * k))
    modes = (modes - modes @ basis @ basis.T).reshape(rank, k, 2) * 0.05
    shapes = mean + np.einsum("nr,rkd->nkd", rng.normal(size=(n, rank)), modes)
    angles = rng.uniform(-30, 30, n)
    t = np.deg2rad(angles)
    # counter-clockwise on screen with y down: x' = x cos t + y sin t, y' = -x sin t + y cos t
    rot = np.stack([np.stack([np.cos(t), -np.sin(t)], -1), np.stack([np.sin(t), np.cos(t)], -1)], -2)
    out = np.einsum("nkd,nde->nke", shapes, rot) * rng.uniform(20, 40, (n, 1, 1)) + rng.uniform(10, 50, (n, 1, 2))
    return out.astype(np.float32), angles


def test_pca_shape_model_round_trip_and_angles():
    landmarks, angles = random_shapes(60)
    full = PCAShapeModel(0, 0, fit_shape_model(landmarks, 100))
    assert full.n_components == 2 * 12 - 4
    lm = torch.tensor(landmarks)
    enc = full.encode(lm)
    assert torch.allclose(full.decode(**enc), lm, atol=1e-3)
    # the angle is relative to the mean training pose: the known angles up to their mean
    got = np.rad2deg(enc["angle"].numpy())
    assert np.allclose(got - got.mean(), angles - angles.mean(), atol=0.05)
    assert abs(got.mean()) < 0.5
    errors = []
    for m in (1, 2, 3, 4):   # rank-3 deformations + the alignment's scale normalisation (along the mean): 4 modes
        model = PCAShapeModel(0, 0, fit_shape_model(landmarks, m))
        errors.append(float((model.decode(**model.encode(lm)) - lm).pow(2).mean().sqrt()))
    assert errors[0] > errors[1] > errors[2] > errors[3] and errors[3] < 0.01, errors
    z = full.standardize(enc["params"], enc["angle"])
    params, angle = full.unstandardize(z)
    assert torch.allclose(params, enc["params"], atol=1e-6) and torch.allclose(angle, enc["angle"], atol=1e-6)


def test_shape_metrics_on_known_cases():
    true = torch.tensor([[0.3, -0.2, 0.1, 10.0], [0.5, 0.5, -0.1, -5.0]])
    same = shape_metrics(true.clone(), true)
    assert same[("shape", "cosine_similarity")] == pytest.approx(1.0)
    assert same[("in_plane_angle", "mean_abs_error_deg")] == pytest.approx(0.0, abs=1e-9)
    flipped = torch.cat([-true[:, :-1], true[:, -1:] + torch.tensor([[20.0], [-350.0]])], 1)
    other = shape_metrics(flipped, true)
    assert other[("shape", "cosine_similarity")] == pytest.approx(-1.0)
    assert other[("in_plane_angle", "mean_abs_error_deg")] == pytest.approx(15.0)   # 20 and 10 (wrapped)


class _Table:
    def __init__(self, landmarks):
        self.landmarks = landmarks


class _DM:
    registered_name = "fake"

    def __init__(self, landmarks):
        self.tables = {"train": _Table(landmarks)}


def test_shape_method_targets_loss_and_evaluation():
    landmarks, _ = random_shapes(30, k=5, rank=2)
    args = {"shape_components": 4, **TINY}
    args.update(SemanticShapeCNN.datamodule_kwargs(_DM(landmarks), args))
    model = create_method("semantic_cnn_shape", TaskSpec.binary_attributes(["Smiling", "Male"]), **args)
    assert model.needs_landmarks and model.networks[0].out.out_features == 4 + 1
    batch = {"image": torch.randn(8, 1, 48, 48), "landmarks": torch.tensor(landmarks[:8]),
             "label": torch.zeros(8, 2, dtype=torch.long), "index": torch.arange(8)}
    assert torch.isfinite(model.compute_loss(model.logits(batch), batch))
    enc = model.shape_pca.encode(batch["landmarks"])
    perfect = model.shape_pca.standardize(enc["params"], enc["angle"])
    assert float(model.compute_loss(perfect, batch)) == pytest.approx(0.0, abs=1e-10)
    pred, true = model.predicted_and_true(batch, perfect)
    rows = model.evaluate_predictions("test", {"shape_pred": pred.numpy(), "shape_true": true.numpy()})
    values = rows.set_index(["target", "metric"])["value"]
    assert values[("shape", "cosine_similarity")] == pytest.approx(1.0, abs=1e-6)
    assert values[("in_plane_angle", "mean_abs_error_deg")] == pytest.approx(0.0, abs=1e-4)
    model.on_test_epoch_start()
    model.test_step(batch, 0)
    model.on_test_epoch_end()
    assert set(model.collected["test"]) >= {"shape_pred", "shape_true", "labels", "index"}
    with pytest.raises(ValueError, match="no landmarks"):
        SemanticShapeCNN.datamodule_kwargs(_DM(None), {})
    with pytest.raises(ValueError, match="not fitted"):
        SemanticShapeCNN(TaskSpec.binary_attributes(["a", "b"]), n_landmarks=5, **TINY).compute_loss(perfect, batch)


# ------------------------------------------------------------------------------------------------
# first-layer similarity (Figure 16)
# ------------------------------------------------------------------------------------------------
def _save(model, path: Path) -> Path:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def test_filter_matchings():
    torch.manual_seed(0)
    a = torch.randn(16, 25)
    shuffled = a[torch.randperm(16)]
    assert filter_similarity(a, a) == pytest.approx(1.0)
    assert filter_similarity(a, shuffled, "index") < 0.5
    assert filter_similarity(a, shuffled, "best") == pytest.approx(1.0)
    assert filter_similarity(a, shuffled, "hungarian") == pytest.approx(1.0)


def test_first_layer_similarity_analysis(tmp_path):
    torch.manual_seed(7)
    joint = SemanticFeaturesCNN(TaskSpec.binary_attributes(["Smiling", "Male"]), **TINY)
    torch.manual_seed(7)
    per_task = SemanticFeaturesCNN(TaskSpec.binary_attributes(["Smiling", "Male"]), per_task_networks=True, **TINY)
    with torch.no_grad():
        per_task.networks[0].blocks[0].conv.weight.mul_(2.0)   # same direction: cosine 1
        per_task.networks[1].blocks[0].conv.weight.normal_()   # an unrelated layer: cosine ~0
    a = _save(joint, tmp_path / "joint.ckpt")
    b = _save(per_task, tmp_path / "per_task.ckpt")
    assert set(first_layer_filters(b, "pt")) == {"pt/Smiling", "pt/Male"}
    csv, png = tmp_path / "out" / "sim.csv", tmp_path / "out" / "sim.png"
    assert run_analysis("first-layer-similarity", [str(a), str(b), "--labels", "Joint", "PerTask", "--random-seed", "1",
                                                   "--csv", str(csv), "--png", str(png)]) == 0
    table = pd.read_csv(csv, index_col=0)
    assert list(table.index) == ["Joint", "PerTask/Smiling", "PerTask/Male", "Random"]
    assert np.allclose(table.to_numpy(), table.to_numpy().T) and np.allclose(np.diag(table), 1.0)
    assert table.loc["Joint", "PerTask/Smiling"] == pytest.approx(1.0, abs=1e-4)
    assert abs(table.loc["Joint", "PerTask/Male"]) < 0.3 and abs(table.loc["Joint", "Random"]) < 0.3
    assert png.stat().st_size > 1000
    with pytest.raises(FileNotFoundError):
        first_layer_filters(tmp_path / "missing.ckpt")


# ------------------------------------------------------------------------------------------------
# end to end through the runner (SynthFaces in CelebA layout, 5-point landmarks)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_runner_end_to_end_classifier_and_shape(tmp_path):
    from facebench.benchmarks.runner import run_suite
    from facebench.datamodules.synthfaces import SynthFacesConfig, generate, write_celeba

    root = write_celeba(generate(SynthFacesConfig(n_identities=12, images_per_identity=5, image_size=48, workers=1)),
                        tmp_path / "synth")
    suite = {
        "name": "sem_test", "results_dir": str(tmp_path / "results"), "seeds": [0],
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "log_every_n_steps": 1},
        "early_stopping": {"patience": 3},
        "datasets": {"synth": {"datamodule": "celeba", "args": {
            "root": str(root), "attributes": ["Smiling", "Male", "Eyeglasses"], "batch_size": 16, "num_workers": 0,
            "transforms": {"per_image_standardize": True}}}},
        "methods": {"sem": {"method": "semantic_cnn", "args": TINY},
                    "sem_shape": {"method": "semantic_cnn_shape", "args": {**TINY, "shape_components": 4}}},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    outcomes = run_suite(str(path), in_process=True, report=False)
    assert [o.state for o in outcomes] == ["done", "done"], [o.message for o in outcomes]
    runs = tmp_path / "results" / "runs"
    cls = pd.read_csv(runs / "sem--synth--s0" / "metrics.csv")
    assert set(cls["target"]) == {"Smiling", "Male", "Eyeglasses"}
    shape = pd.read_csv(runs / "sem_shape--synth--s0" / "metrics.csv", keep_default_na=False)
    got = shape.set_index(["split", "target", "metric"])["value"]
    assert -1.0 <= got[("test", "shape", "cosine_similarity")] <= 1.0
    assert 0.0 <= got[("test", "in_plane_angle", "mean_abs_error_deg")] < 180.0
    ckpt = torch.load(runs / "sem--synth--s0" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert bool(ckpt["state_dict"]["input_norm.fitted"])   # per-pixel statistics fitted and saved


# ------------------------------------------------------------------------------------------------
# real data
# ------------------------------------------------------------------------------------------------
@pytest.mark.realdata
@pytest.mark.skipif(not CELEBA.is_dir(), reason=f"real CelebA subset not found at {CELEBA}")
def test_real_celeba_batch_trains():
    from facebench.datamodules.celeba import CelebADataModule

    dm = CelebADataModule(CELEBA, attributes=["Smiling", "Male", "Eyeglasses"], max_samples=32, batch_size=16,
                          num_workers=0, transforms={"per_image_standardize": True})
    model = create_method("semantic_cnn", dm.task, **TINY)
    dm.configure_input(model.image_size, model.in_chans)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 1, 48, 48)
    assert math.isclose(float(batch["image"][0].mean()), 0.0, abs_tol=1e-4)   # per-image GCN
    loss = model.compute_loss(model.logits(batch), batch)
    loss.backward()
    assert torch.isfinite(loss) and model.networks[0].blocks[0].conv.weight.grad.abs().sum() > 0

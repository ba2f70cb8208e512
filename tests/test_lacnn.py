"""Tests of the LACNN method (lightning_modules/lacnn.py): AlexNet shapes, the per-trait softmax ->
logit mapping, the AUGMENT-FLL landmark channel (against a brute-force loop, and through the
datamodule's rotation / flip), a one-batch overfit, and the two analyses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from facebench.core.tasks import Target, TaskSpec
from facebench.datamodules.transforms import FLIP_5, FaceTransform, TransformConfig
from facebench.benchmarks.analyses import run_analysis
from facebench.benchmarks.analyses.lacnn import compare_traits
from facebench.lightning_modules.lacnn import LACNN, CaffeAlexNet, LACNNBaseline, landmark_channel, nearest_landmark_index
from facebench.lightning_modules.registry import create_method, get_method_class

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL = {"input_size": 48, "fc_width": 64}   # tiny AlexNets for CPU tests (layers as in the paper)


pytestmark = pytest.mark.usefixtures("one_thread")


def binary_task(n: int = 3) -> TaskSpec:
    return TaskSpec.binary_attributes([f"t{i}" for i in range(n)], name="toy")


def mixed_task() -> TaskSpec:
    return TaskSpec((Target("gender"), Target("emotion", "multiclass", classes=("joy", "sad", "neutral", "other")),
                     Target("hair", "multilabel", classes=("dark", "bright", "gray"))), name="mixed")


def batch_for(task: TaskSpec, b: int = 4, size: int = 48, k: int = 5, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    labels = []
    for t in task.targets:
        if t.kind == "binary":
            labels.append(torch.randint(0, 2, (b, 1), generator=g))
        elif t.kind == "multilabel":
            labels.append(torch.randint(0, 2, (b, t.n_classes), generator=g))
        else:
            labels.append(torch.randint(0, t.n_classes, (b, 1), generator=g))
    return {"image": torch.randn(b, 3, size, size, generator=g), "label": torch.cat(labels, 1),
            "landmarks": torch.rand(b, k, 2, generator=g) * (size - 1)}


def brute_force_channel(landmarks: np.ndarray, h: int, w: int) -> np.ndarray:
    """Figure 3 of the paper, literally: three loops, first strict minimum wins."""
    out = np.zeros((h, w), dtype=np.int64)
    for x in range(w):
        for y in range(h):
            best, arg = np.inf, -1
            for j, (lx, ly) in enumerate(landmarks):
                d = np.sqrt((lx - x) ** 2 + (ly - y) ** 2)
                if d < best:
                    best, arg = d, j
            out[y, x] = arg
    return out


# -- AlexNet ------------------------------------------------------------------------------------
def test_alexnet_layers_follow_caffe_and_adapt_to_input_size():
    net = CaffeAlexNet(3, 2, 150)   # the paper's input and layer widths
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert [c.kernel_size[0] for c in convs] == [11, 5, 3, 3, 3] and convs[0].stride == (4, 4)
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    assert sum(isinstance(m, torch.nn.LocalResponseNorm) for m in net.features) == 2
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in net.features) == 3
    linears = [m for m in net.classifier if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [4096, 4096, 2]
    assert [m.p for m in net.classifier if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    assert net.flat_features == 256 * 4 * 4                      # Caffe rounding up: 150 -> 35 -> 17 -> 8 -> 4
    assert CaffeAlexNet(3, 2, 227, fc_width=8).flat_features == 256 * 6 * 6   # the classic 227 input
    assert CaffeAlexNet(4, 2, 64, fc_width=8).flat_features == 256
    with pytest.raises(ValueError, match="too small"):
        CaffeAlexNet(3, 2, 32)


@pytest.mark.parametrize("name,joint", [("lacnn_baseline", False), ("lacnn_baseline", True), ("lacnn", False),
                                        ("lacnn", True)])
def test_output_shapes(name: str, joint: bool):
    task = mixed_task()
    model = create_method(name, task, joint=joint, **SMALL)
    batch = batch_for(task)
    logits = model.logits(batch)
    assert logits.shape == (4, task.n_logits)
    assert len(model.nets) == (1 if joint else 3)
    assert model.nets[0].conv1.in_channels == (4 if name == "lacnn" else 3)
    if not joint:   # 2 softmax outputs for the binary trait, one per class otherwise
        assert [net.classifier[-1].out_features for net in model.nets] == [2, 4, 3]
    probs = model.probabilities(batch)
    assert probs.shape == logits.shape and torch.all((probs >= 0) & (probs <= 1))
    assert torch.isfinite(model.compute_loss(logits, batch))


def test_per_trait_softmax_maps_to_the_task_logit_layout():
    task = mixed_task()
    model = create_method("lacnn", task, **SMALL).eval()
    batch = batch_for(task, b=6)
    x = model.network_input(batch)
    with torch.no_grad():
        raw = [net(x) for net in model.nets]
        logits = model.logits(batch)
    gender, emotion, hair = task.logit_slices
    # binary: sigmoid(l1 - l0) is the softmax probability of the positive class
    torch.testing.assert_close(torch.sigmoid(logits[:, gender])[:, 0], torch.softmax(raw[0], 1)[:, 1])
    torch.testing.assert_close(task.probabilities(logits)[:, emotion], torch.softmax(raw[1], 1))
    torch.testing.assert_close(logits[:, hair], raw[2])
    # the loss is the sum of the per-trait losses: 2-way softmax CE, C-way softmax CE, sigmoid CE
    y = batch["label"]
    expected = (torch.nn.functional.cross_entropy(raw[0], y[:, 0]) + torch.nn.functional.cross_entropy(raw[1], y[:, 1])
                + torch.nn.functional.binary_cross_entropy_with_logits(raw[2], y[:, 2:].float()))
    torch.testing.assert_close(model.compute_loss(logits, batch), expected)


def test_joint_mode_uses_sigmoid_cross_entropy_eq3():
    task = binary_task(4)
    model = create_method("lacnn_baseline", task, joint=True, **SMALL).eval()
    batch = batch_for(task)
    with torch.no_grad():
        logits = model.logits(batch)
    assert model.nets[0].classifier[-1].out_features == 4
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"].float())
    torch.testing.assert_close(model.compute_loss(logits, batch), expected)


# -- AUGMENT-FLL -------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [5, 68])
def test_landmark_channel_equals_brute_force(k: int):
    g = torch.Generator().manual_seed(k)
    landmarks = torch.rand(2, k, 2, generator=g) * torch.tensor([23.0, 17.0]) - 2.0   # some outside the image
    got = nearest_landmark_index(landmarks, 17, 23)
    assert got.shape == (2, 17, 23) and got.dtype == torch.long
    for b in range(2):
        np.testing.assert_array_equal(got[b].numpy(), brute_force_channel(landmarks[b].numpy(), 17, 23))


def test_landmark_channel_ties_and_encodings():
    # integer landmarks (CelebA's files) put many pixels at equal distances: the lower index wins
    landmarks = torch.tensor([[[4.0, 4.0], [10.0, 4.0], [4.0, 10.0], [10.0, 10.0], [7.0, 7.0]]])
    got = nearest_landmark_index(landmarks, 15, 15)
    np.testing.assert_array_equal(got[0].numpy(), brute_force_channel(landmarks[0].numpy(), 15, 15))
    unit = landmark_channel(landmarks, 15, 15, "unit")
    index = landmark_channel(landmarks, 15, 15, "index")
    assert unit.shape == (1, 1, 15, 15) and float(unit.min()) == 0.0 and float(unit.max()) == 1.0
    torch.testing.assert_close(index, got[:, None].float() + 1)        # the paper's 1..k
    with pytest.raises(ValueError, match="encoding"):
        landmark_channel(landmarks, 15, 15, "onehot")
    unknown = torch.cat([landmarks, torch.full_like(landmarks, float("nan"))])   # e.g. an unreadable image
    channel = landmark_channel(unknown, 15, 15, "index")
    torch.testing.assert_close(channel[0], index[0])
    assert float(channel[1].abs().sum()) == 0.0


def _warped_blob_centres(cfg: TransformConfig, points: np.ndarray, size: int) -> tuple[np.ndarray, dict]:
    """Warp one image per landmark, white 3x3 blob at that landmark only, with the same random draw;
    return the intensity-weighted centre of every warped blob and the sample of the first image."""
    centres, first = [], None
    for x, y in np.rint(points).astype(int):
        image = np.zeros((size, size, 3), dtype=np.uint8)
        image[y - 1:y + 2, x - 1:x + 2] = 255
        sample = FaceTransform(cfg, train=True)(image, landmarks=points, rng=np.random.default_rng(0))
        first = first or sample
        weight = sample["image"][0].numpy()
        ys, xs = np.mgrid[:size, :size]
        centres.append(((xs * weight).sum() / weight.sum(), (ys * weight).sum() / weight.sum()))
    return np.array(centres), first


@pytest.mark.parametrize("flip", [False, True])
def test_landmark_channel_follows_rotated_and_flipped_image(flip: bool):
    """Landmarks go through the datamodule's warp with the pixels, so the channel LACNN computes marks
    each landmark's blob with that landmark's index (a flip re-orders left/right points)."""
    points = np.array([[20.0, 22.0], [44.0, 22.0], [32.0, 33.0], [23.0, 44.0], [41.0, 44.0]])   # CelebA order
    cfg = TransformConfig(image_size=64, rotation_choices=[40.0], hflip=1.0 if flip else 0.0, border="constant",
                          mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    centres, sample = _warped_blob_centres(cfg, points, 64)
    assert np.abs(centres - points).max() > 5                   # the image really moved
    new_index = [FLIP_5[j] if flip else j for j in range(5)]    # the blob of old point j is new point FLIP_5[j]
    np.testing.assert_allclose(sample["landmarks"].numpy()[new_index], centres, atol=0.25)
    model = create_method("lacnn", binary_task(2), input_size=64, fc_width=16)
    x = model.network_input({"image": sample["image"][None], "landmarks": sample["landmarks"][None]})
    channel = np.rint(x[0, 3].numpy() * 4).astype(int)          # unit encoding: index / (k - 1)
    for j, (cx, cy) in enumerate(centres):
        assert channel[int(round(cy)), int(round(cx))] == new_index[j]


def test_lacnn_needs_landmarks():
    model = create_method("lacnn", binary_task(2), **SMALL)
    batch = batch_for(binary_task(2))
    del batch["landmarks"]
    with pytest.raises(ValueError, match="landmarks"):
        model.logits(batch)
    assert get_method_class("lacnn").needs_landmarks and not get_method_class("lacnn_baseline").needs_landmarks


def test_rotation_augmentation_is_the_papers_and_optional():
    assert LACNN(binary_task(2), **SMALL).default_train_transforms == {"rotation_choices": [0.0, -40.0, -20.0, 20.0, 40.0]}
    assert LACNNBaseline(binary_task(2), rotation_angles=[], **SMALL).default_train_transforms == {}


# -- training ----------------------------------------------------------------------------------
def test_one_batch_overfit():
    """Per-trait LACNN memorises one batch with its default optimiser (SGD 0.01, momentum 0.9): the
    loss without dropout falls to half its initial value within a few dozen steps."""
    torch.manual_seed(0)
    task = binary_task(2)
    model = create_method("lacnn", task, input_size=40, fc_width=128)
    batch = batch_for(task, b=8, size=40)
    opt = model.configure_optimizers()["optimizer"]

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = float(model.compute_loss(model.logits(batch), batch))
        model.train()
        return loss

    initial, losses = eval_loss(), []
    for step in range(1, 41):
        loss = model.compute_loss(model.logits(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 5 == 0:
            losses.append(eval_loss())
            if losses[-1] <= 0.5 * initial:
                break
    assert losses[-1] <= 0.5 * initial, (initial, losses)


# -- analyses ----------------------------------------------------------------------------------
def test_first_layer_figure_from_checkpoints(tmp_path: Path):
    task = binary_task(2)
    ckpts = []
    for name in ("lacnn_baseline", "lacnn"):
        model = create_method(name, task, input_size=48, fc_width=16)
        path = tmp_path / f"{name}.ckpt"
        torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, path)
        ckpts.append(str(path))
    (tmp_path / "img_align_celeba").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 50, 3), dtype=np.uint8)).save(tmp_path / "img_align_celeba" / "000001.jpg")
    (tmp_path / "list_landmarks_align_celeba.txt").write_text(
        "1\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n"
        "000001.jpg 17 25 33 25 25 33 19 43 31 43\n")
    for extra in ([], ["--filters", "--trait", "t1"], ["--per-map"]):
        out = tmp_path / f"fig{len(extra)}.png"
        assert run_analysis("lacnn-first-layer", ["--checkpoint", *ckpts, "--image",
                                                  str(tmp_path / "img_align_celeba" / "000001.jpg"), "--out", str(out),
                                                  *extra]) == 0
        with Image.open(out) as im:
            assert im.size[0] > im.size[1] > 100


def test_compare_traits_tests_the_per_seed_differences(tmp_path):
    """Table 3 from a leaderboard: per trait the seed-matched means, per-seed differences and the
    seed-aware test (a paired t over seeds here: no per-image predictions); a trait whose difference
    flips sign across seeds is not significant; the analysis reads a committed leaderboard.csv."""
    from scipy import stats as sps

    from facebench.benchmarks.analyses import run_analysis

    acc = {"lacnn_baseline": {"Male": (0.90, 0.88, 0.89), "Smiling": (0.70, 0.72, 0.71)},
           "lacnn": {"Male": (0.95, 0.94, 0.945), "Smiling": (0.77, 0.747, 0.69)}}
    rows = [{"dataset": "synth", "split": "test", "method": m, "seed": s, "attribute": t, "class": "", "accuracy": v[s],
             "positive_rate": 0.5, "n_samples": 200} for m, traits in acc.items() for t, v in traits.items() for s in range(3)]
    board = pd.DataFrame(rows)
    table = compare_traits(board).set_index("trait")
    assert list(table.index[:2]) == ["Male", "Smiling"] and table.loc["Male", "positives"] == 100
    assert table.loc["Male", "lacnn"] == pytest.approx(np.mean([0.95, 0.94, 0.945]))
    assert table.loc["Smiling", "per_seed_differences"] == "+7.00 / +2.70 / -2.00"
    assert table.loc["Smiling", "p_value"] == pytest.approx(sps.ttest_1samp([0.07, 0.027, -0.02], 0).pvalue)
    assert not table.loc["Smiling", "significant"] and table.loc["Smiling", "winner"] == ""
    assert table.loc["Male", "significant"] and table.loc["Male", "winner"] == "lacnn"
    assert "Average" in table.index
    with pytest.raises(ValueError, match="no 'accuracy' values"):
        compare_traits(board, baseline="nope", method="other")
    # the analysis on a results folder with only its committed leaderboard
    (tmp_path / "synth").mkdir()
    board.to_csv(tmp_path / "synth" / "leaderboard.csv", index=False)
    out = tmp_path / "synth" / "lacnn_vs_baseline.csv"
    assert run_analysis("lacnn-compare", [str(tmp_path / "synth"), "--out", str(out)]) == 0
    written = pd.read_csv(out).set_index("trait")
    assert written.loc["Smiling", "per_seed_differences"] == "+7.00 / +2.70 / -2.00"
    assert (tmp_path / "synth" / "lacnn_vs_baseline_info.json").is_file()


# -- real data ---------------------------------------------------------------------------------
@pytest.mark.realdata
@pytest.mark.skipif(not (DATA / "celeba_subset").is_dir(), reason="needs ../shared/data/celeba_subset")
def test_real_celeba_subset_baseline_runs_and_lacnn_asks_for_landmarks():
    from facebench.datamodules.celeba import CelebADataModule

    dm = CelebADataModule(DATA / "celeba_subset", batch_size=4, num_workers=0, attributes=["Male", "Smiling"],
                          max_samples=8)
    baseline = create_method("lacnn_baseline", dm.task, **SMALL)
    dm.configure_input(baseline.image_size, baseline.in_chans, train_defaults=baseline.default_train_transforms)
    batch = next(iter(dm.train_dataloader()))
    assert baseline.logits(batch).shape == (4, 2)
    assert "landmarks" not in batch   # the subset ships no list_landmarks_align_celeba.txt
    with pytest.raises(ValueError, match="landmark_provider"):
        create_method("lacnn", dm.task, **SMALL).logits(batch)


@pytest.mark.realdata
@pytest.mark.skipif(not (DATA / "celeba_subset").is_dir(), reason="needs ../shared/data/celeba_subset")
def test_real_faces_with_dlib_68_landmarks(tmp_path: Path):
    """The paper's setting on real faces: 68 points from a landmark localiser (dlib here, TCDCN in the
    paper), warped with the image, become a 68-region channel."""
    from facebench.datamodules.celeba import CelebADataModule

    dm = CelebADataModule(DATA / "celeba_subset", batch_size=4, num_workers=0, attributes=["Male", "Smiling"],
                          max_samples={"train": 4, "val": 1, "test": 1}, cache_dir=tmp_path,
                          landmark_provider={"name": "dlib68", "detector": "hog"})
    model = create_method("lacnn", dm.task, input_size=64, fc_width=64)
    dm.configure_input(model.image_size, model.in_chans, landmarks=True, train_defaults=model.default_train_transforms)
    batch = next(iter(dm.train_dataloader()))
    assert batch["landmarks"].shape == (4, 68, 2)
    assert model.logits(batch).shape == (4, 2)
    index = nearest_landmark_index(batch["landmarks"], 64, 64)
    assert all(len(torch.unique(index[b])) >= 40 for b in range(4))   # a face's 68 regions fill the crop

"""MCNN, MCNN-AUX and the independent CNNs (lightning_modules/mcnn.py): shapes, parameter counts,
the frozen MCNN under AUX, one-batch overfitting, grouping configuration and pre-processing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facebench.datamodules.celeba import CELEBA_ATTRIBUTES, CelebADataModule, parse_attributes
from facebench.core.tasks import TaskSpec, Target
from facebench.benchmarks.analyses import analysis_names, run_analysis
from facebench.lightning_modules.mcnn import (CELEBA_GROUPS, MCNN, GroupingError, IndependentCNNs, MCNNAux, auto_conv1_stride,
                                    resolve_groups)
from facebench.lightning_modules.registry import create_method, method_names

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CELEBA = TaskSpec.binary_attributes(CELEBA_ATTRIBUTES, name="celeba")
SMALL = 40   # input side for CPU tests (Conv1 stride 1, Conv3 map 4x4, a 1x1 grid for FC1)
NARROW = {"conv_filters": (12, 16, 24), "fc_units": 32}   # narrow layers for the training tests


pytestmark = pytest.mark.usefixtures("one_thread")


def small_task() -> TaskSpec:
    """Six CelebA attributes over four groups (Gender, Mouth, and two sharing Conv3Other)."""
    return CELEBA.subset(["Male", "Smiling", "Wearing_Lipstick", "Bald", "Goatee", "Chubby"])


def batch(task: TaskSpec, n: int = 8, size: int = SMALL, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, size, size, generator=g),
            "label": torch.randint(0, 2, (n, task.n_label_slots), generator=g)}


# ------------------------------------------------------------------------------------------------
# architecture
# ------------------------------------------------------------------------------------------------
def test_table1_covers_the_40_celeba_attributes_once() -> None:
    listed = [a for names in CELEBA_GROUPS.values() for a in names]
    assert sorted(listed) == sorted(CELEBA_ATTRIBUTES)
    groups = resolve_groups(CELEBA)
    assert list(groups) == ["Gender", "Nose", "Mouth", "Eyes", "Face", "AroundHead", "FacialHair", "Cheeks", "Fat"]
    assert groups["Nose"] == ["Big_Nose", "Pointy_Nose"]


def test_mcnn_layers_follow_the_paper_at_227() -> None:
    m = MCNN(CELEBA)
    assert m.conv1_stride == 4 and m.conv3_grid() == 2
    assert m.conv1.conv.weight.shape == (75, 3, 7, 7)
    assert m.conv2.conv.weight.shape == (200, 75, 5, 5)
    assert m.conv3.conv.weight.shape == (6 * 300, 200, 3, 3)          # six Conv3s: 5 groups + Conv3Other
    assert list(m.branches) == ["Gender", "Nose", "Mouth", "Eyes", "Face", "Other"]
    assert m.branches["Other"] == ["AroundHead", "FacialHair", "Cheeks", "Fat"]
    assert m.heads.fc1.weight.shape == (9, 300 * 2 * 2, 512)          # nine FC1s
    assert m.heads.fc2.weight.shape == (9, 512, 512)                  # nine FC2s
    assert m.heads.out.weight.shape == (40, 512)                      # one output per attribute
    # each output unit reads its own group's FC2
    male = CELEBA.names.index("Male")
    assert int(m.heads.out.path_of_column[male]) == list(m.groups).index("Gender")


def test_parameter_counts_at_the_papers_input() -> None:
    mcnn = MCNN(CELEBA)
    assert mcnn.parameter_count() < 16_000_000                        # "fewer than 16 million"
    aux = MCNNAux(CELEBA)
    assert aux.parameter_count() - mcnn.parameter_count() == 40 * 40 + 40
    assert aux.parameter_count(trainable_only=True) == 40 * 40 + 40
    path = IndependentCNNs(CELEBA.subset(["Male", "Smiling"])).path_parameter_count()
    # "each CNN would have over 1.6 million parameters"; 300x2x2 FC1 inputs give 1,804,681
    assert 1_600_000 < path < 1_850_000
    assert 40 * path > 64_000_000                                      # "over 64 million" for 40


@pytest.mark.parametrize("size, stride", [(227, 4), (160, 3), (112, 2), (96, 2), (64, 1), (48, 1)])
def test_reduced_inputs_build_and_run(size: int, stride: int) -> None:
    assert auto_conv1_stride(size) == stride
    m = MCNN(small_task(), input_size=size).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, size, size))
    assert out.shape == (2, 6) and torch.isfinite(out).all()


def test_too_small_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="too small"):
        MCNN(small_task(), input_size=16)


@pytest.mark.parametrize("name", ["mcnn", "mcnn_aux", "independent_cnns"])
def test_output_shapes(name: str) -> None:
    task = small_task()
    m = create_method(name, task, input_size=SMALL).eval()
    b = batch(task, n=3)
    logits = m.logits(b)
    assert logits.shape == (3, task.n_logits)
    probs = m.probabilities(b)
    assert probs.shape == (3, task.n_logits) and ((probs >= 0) & (probs <= 1)).all()
    assert m.flops_per_image() > 0


def test_independent_paths_are_independent() -> None:
    """Changing one path's weights changes only that attribute's output (grouped conv + batched FC)."""
    task = small_task()
    m = IndependentCNNs(task, input_size=SMALL).eval()
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        before = m(x)
        m.conv2.conv.weight[200 * 3:200 * 4].mul_(2.0)    # path 3 only
        m.heads.fc2.weight[3].mul_(0.5)
        after = m(x)
    changed = (before - after).abs().amax(dim=0) > 1e-6
    assert changed.tolist() == [False, False, False, True, False, False]


def test_multiclass_target_gets_a_softmax_slice_in_its_group() -> None:
    task = TaskSpec((Target("Male"), Target("Smiling"), Target("Hair", "multiclass", classes=("black", "blond", "brown"),
                                                                 group="AroundHead")), name="mixed")
    m = MCNN(task, input_size=SMALL)
    b = batch(task, n=4)
    b["label"][:, 2] = torch.tensor([0, 1, 2, 1])
    logits = m.logits(b)
    assert logits.shape == (4, 5)
    probs = m.probabilities(b)
    assert torch.allclose(probs[:, 2:].sum(1), torch.ones(4))
    assert torch.isfinite(m.compute_loss(logits, b))


# ------------------------------------------------------------------------------------------------
# grouping as configuration
# ------------------------------------------------------------------------------------------------
def test_unlisted_attribute_is_named_in_the_error() -> None:
    task = TaskSpec.binary_attributes(["Male", "Smiling", "Freckles"], name="mine")
    with pytest.raises(GroupingError, match="Freckles"):
        MCNN(task, input_size=SMALL)
    with pytest.raises(GroupingError, match=r"\['Smiling'\]"):
        MCNN(task, input_size=SMALL, groups={"Gender": ["Male"], "Skin": ["Freckles"]})


def test_unlisted_group_other_joins_conv3_other() -> None:
    task = TaskSpec.binary_attributes(["Male", "Bald", "Freckles"], name="mine")
    m = MCNN(task, input_size=SMALL, unlisted_group="Other")
    assert m.groups == {"Gender": ["Male"], "AroundHead": ["Bald"], "Other": ["Freckles"]}
    assert m.branches == {"Gender": ["Gender"], "Other": ["AroundHead", "Other"]}


def test_custom_groups_names_and_target_group_field() -> None:
    task = TaskSpec.binary_attributes(["smiling", "big lips", "eyeglasses"], name="other",
                                      groups={"eyeglasses": "Glasses"})
    m = MCNN(task, input_size=SMALL, groups={"Mouth": ["Smiling", "Big_Lips"]})   # matching ignores case / "_"
    assert m.groups == {"Mouth": ["smiling", "big lips"], "Glasses": ["eyeglasses"]}
    assert list(m.branches) == ["Mouth", "Glasses"]
    assert m.logits(batch(task, n=2)).shape == (2, 3)


def test_grouping_config_errors() -> None:
    task = small_task()
    with pytest.raises(GroupingError, match="two groups"):
        MCNN(task, input_size=SMALL, groups={"A": ["Male", "Smiling"], "B": ["Male"]}, unlisted_group="Other")
    with pytest.raises(GroupingError, match="list of attribute names"):
        MCNN(task, input_size=SMALL, groups={"A": "Male"})
    with pytest.raises(GroupingError, match="two branches"):
        MCNN(task, input_size=SMALL, conv3_sharing={"X": ["Mouth"], "Y": ["Mouth"]})
    with pytest.raises(GroupingError, match="list of group names"):
        MCNN(task, input_size=SMALL, conv3_sharing={"Other": "AroundHead"})
    with pytest.raises(ValueError, match="unknown option"):
        create_method("mcnn", task, input_size=SMALL, grouping={})


# ------------------------------------------------------------------------------------------------
# MCNN-AUX
# ------------------------------------------------------------------------------------------------
def save_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def test_aux_trains_only_its_own_layer(tmp_path: Path) -> None:
    task = small_task()
    mcnn = MCNN(task, input_size=SMALL)
    ckpt = save_checkpoint(mcnn, tmp_path / "mcnn.ckpt")
    aux = MCNNAux(task, input_size=SMALL, init_checkpoint=str(ckpt), optimizer={"name": "SGD", "lr": 0.5}, scheduler={})
    frozen = {k: v.clone() for k, v in aux.state_dict().items() if not k.startswith("aux.")}
    for k, v in frozen.items():
        assert torch.equal(v, mcnn.state_dict()[k]), k                 # MCNN weights loaded
    aux_before = aux.aux.weight.detach().clone()
    opt = aux.configure_optimizers()
    assert {id(p) for group in opt.param_groups for p in group["params"]} == {id(aux.aux.weight), id(aux.aux.bias)}
    aux.train()
    assert not aux.heads.drop.training and aux.aux.training            # frozen MCNN runs without dropout
    loss = aux.compute_loss(aux.logits(batch(task)), batch(task))
    loss.backward()
    opt.step()
    for k, v in aux.state_dict().items():
        if not k.startswith("aux."):
            assert torch.equal(v, frozen[k]), f"{k} changed"
    assert not torch.equal(aux.aux.weight, aux_before)


def test_aux_rejects_a_checkpoint_of_another_mcnn(tmp_path: Path) -> None:
    ckpt = save_checkpoint(MCNN(small_task(), input_size=64, fc_units=64), tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="same MCNN"):
        MCNNAux(small_task(), input_size=SMALL, init_checkpoint=str(ckpt))


def test_aux_starts_at_mcnn_scores_with_identity_init(tmp_path: Path) -> None:
    task = small_task()
    mcnn = MCNN(task, input_size=SMALL).eval()
    aux = MCNNAux(task, input_size=SMALL, init_checkpoint=str(save_checkpoint(mcnn, tmp_path / "m.ckpt"))).eval()
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        assert torch.allclose(aux(x), mcnn(x), atol=1e-6)


def test_aux_heatmap_analysis_writes_a_png(tmp_path: Path) -> None:
    assert "mcnn-aux-heatmap" in analysis_names()
    aux = MCNNAux(small_task(), input_size=SMALL, aux_init="xavier")
    ckpt = save_checkpoint(aux, tmp_path / "aux.ckpt")
    out = tmp_path / "fig3.png"
    assert run_analysis("mcnn-aux-heatmap", [str(ckpt), str(out)]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 300
    with pytest.raises(ValueError, match="aux.weight"):
        run_analysis("mcnn-aux-heatmap", [str(save_checkpoint(MCNN(small_task(), input_size=SMALL), tmp_path / "m.ckpt")), str(out)])


# ------------------------------------------------------------------------------------------------
# one-batch overfitting
# ------------------------------------------------------------------------------------------------
def overfit(model, b: dict[str, torch.Tensor], steps: int) -> tuple[float, float]:
    opt = model.configure_optimizers()   # the method's own parameter selection (scheduler={}: no trainer here)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model.compute_loss(model.logits(b), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], min(losses[-5:])


@pytest.mark.parametrize("cls", [MCNN, IndependentCNNs])
def test_one_batch_overfit(cls: type) -> None:
    torch.manual_seed(0)
    task = small_task()
    model = cls(task, input_size=SMALL, optimizer={"name": "Adam", "lr": 3e-3}, scheduler={}, dropout=0.0, **NARROW)
    first, last = overfit(model, batch(task), steps=40)
    assert last < 0.5 * first, (first, last)


def test_one_batch_overfit_aux(tmp_path: Path) -> None:
    """AUX alone (zero init, loss log 2) learns to read the scores of an MCNN fitted to the batch."""
    torch.manual_seed(0)
    task = small_task()
    b = batch(task)
    mcnn = MCNN(task, input_size=SMALL, optimizer={"name": "Adam", "lr": 3e-3}, scheduler={}, dropout=0.0, **NARROW)
    overfit(mcnn, b, steps=40)
    aux = MCNNAux(task, input_size=SMALL, dropout=0.0, aux_init="zeros", optimizer={"name": "Adam", "lr": 0.1},
                  scheduler={}, **NARROW,
                  init_checkpoint=str(save_checkpoint(mcnn, tmp_path / "m.ckpt")))
    first, last = overfit(aux, b, steps=30)
    assert abs(first - np.log(2)) < 1e-4
    assert last < 0.5 * first, (first, last)


# ------------------------------------------------------------------------------------------------
# pre-processing and the runner's hooks
# ------------------------------------------------------------------------------------------------
def write_celeba(root: Path, n: int = 6) -> Path:
    """A tiny CelebA folder (official layout) of random images."""
    rng = np.random.default_rng(0)
    (root / "img_align_celeba").mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for f in names:
        Image.fromarray(rng.integers(0, 256, (44, 36, 3), dtype=np.uint8)).save(root / "img_align_celeba" / f)
    attrs = ["Male", "Smiling", "Bald"]
    rows = [f"{f} " + " ".join(str(int(v)) for v in rng.choice([-1, 1], len(attrs))) for f in names]
    (root / "list_attr_celeba.txt").write_text(f"{n}\n{' '.join(attrs)}\n" + "\n".join(rows) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(f"{f} {i % 3}" for i, f in enumerate(names)) + "\n")
    return root


def test_preprocessing_defaults_reach_train_and_eval(tmp_path: Path) -> None:
    dm = CelebADataModule(write_celeba(tmp_path / "celeba"), batch_size=2, num_workers=0)
    dm.setup()
    kwargs = MCNN.datamodule_kwargs(dm, {"mean_images": 4})
    mean = kwargs["pixel_mean"]
    assert len(mean) == 3 and all(0.3 < v < 0.7 for v in mean)        # random uint8 pixels: about 0.5
    model = create_method("mcnn", dm.task, input_size=SMALL, **kwargs)
    dm.configure_input(model.image_size, model.in_chans, train_defaults=model.default_train_transforms)
    assert dm.train_cfg.random_crop and not dm.eval_cfg.random_crop
    for cfg in (dm.train_cfg, dm.eval_cfg):                            # same framing and mean in every split
        assert cfg.resize_to == round(SMALL * 256 / 227)
        assert tuple(cfg.mean) == tuple(mean) and cfg.std[0] == pytest.approx(1 / 255)
    x = dm.dataset("val")[0]["image"]
    assert x.shape == (3, SMALL, SMALL) and x.abs().max() > 2            # Caffe's 0-255 scale


def test_registered_and_listed() -> None:
    assert {"mcnn", "mcnn_aux", "independent_cnns"} <= set(method_names())
    cfg = MCNN.reference_config()
    ref = TaskSpec.binary_attributes([f"attr{i}" for i in range(40)])
    assert MCNN(ref, **cfg).parameter_count() == MCNN(CELEBA).parameter_count()


@pytest.mark.realdata
@pytest.mark.skipif(not (DATA / "celeba_subset").is_dir(), reason="needs ../shared/data/celeba_subset")
def test_table1_matches_the_real_celeba_attribute_file() -> None:
    names, _, _ = parse_attributes(DATA / "celeba_subset" / "list_attr_celeba.txt")
    task = TaskSpec.binary_attributes(names)
    assert sum(len(v) for v in resolve_groups(task).values()) == 40

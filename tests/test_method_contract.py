"""The contract every registered method keeps (parametrised over ``method_names()``, so a new method
is covered as soon as it registers): logits of the documented shape, a finite training loss, a
gradient on every trainable parameter (closed-form methods: a fit through Lightning that gives
finite probabilities), and a checkpoint round trip with identical outputs.

Each method is built as small as it can be while staying the method (``CASES``: constructor
arguments, the earlier stage whose checkpoint it starts from, the extra batch fields it reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import lightning as L
import numpy as np
import pytest
import torch

from facebench.core.tasks import TaskSpec
from facebench.lightning_modules.registry import create_method, get_method_class, method_names

#: A few binary CelebA attributes (MCNN's groups know them: Gender, Mouth, Eyes).
TASK = TaskSpec.binary_attributes(["Male", "Smiling", "Eyeglasses"], name="contract")
BATCH = 4
N_LANDMARKS = 12
IDENTITIES = [1, 2, 3, 4, 5, 6]

TINY_LNET = {"channels": [8, 16, 16, 16, 16], "fc_dim": 16, "dropout": 0.0, "s_size": 80, "local_response_norm": False}
TINY_ANET = {"input_size": 32, "channels": [8, 16, 16, 16], "kernels": [3, 3, 3, 3], "fc_dim": 16}
TINY_BRANCHING = {"input_size": 32, "stem_channels": 8, "stages": [[8, 1, 1], [16, 1, 2]], "bottleneck_dim": 16}
TINY_MCNN = {"input_size": 40, "conv_filters": [12, 16, 24], "fc_units": 16}
TINY_SEMANTIC = {"conv_channels": [4, 4, 8], "fc_units": 16}


@dataclass
class Case:
    """How to build one method small: ``args`` (or ``make_args()`` for arguments computed once),
    ``parent``: (method, args, trained flags) of the earlier stage whose checkpoint is
    ``init_checkpoint``; ``landmarks`` / ``embedding``: the batch carries facial landmarks / 128-d
    face descriptors (given, the dlib probe does not run dlib: its documented ``batch["embedding"]``
    input); ``identities``: the identity of each batch sample (a function of the built model when
    it depends on the model's identity partition); ``outputs``: the width of ``logits`` when it is
    not ``task.n_logits`` (identity or shape outputs)."""

    args: dict[str, Any] = field(default_factory=dict)
    make_args: Callable[[], dict[str, Any]] | None = None
    parent: tuple[str, dict[str, Any], tuple[str, ...]] | None = None
    landmarks: bool = False
    embedding: bool = False
    identities: Callable[[Any], list[int]] = lambda model: [IDENTITIES[i % len(IDENTITIES)] for i in range(BATCH)]
    outputs: Callable[[Any], int] | None = None
    attribute_probabilities: bool = True


def face_landmarks(n: int, size: int, seed: int) -> np.ndarray:
    """``[n, K, 2]`` pixel landmarks: an ellipse of K points, deformed, turned by up to 20 degrees,
    scaled and shifted inside a ``size`` image."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, N_LANDMARKS, endpoint=False)
    base = np.stack([np.cos(t), 1.3 * np.sin(t)], 1)
    shapes = base + 0.05 * rng.normal(size=(n, N_LANDMARKS, 2))
    a = np.deg2rad(rng.uniform(-20, 20, n))
    rot = np.stack([np.stack([np.cos(a), -np.sin(a)], -1), np.stack([np.sin(a), np.cos(a)], -1)], -2)
    out = np.einsum("nkd,nde->nke", shapes, rot) * size * 0.25 + size / 2 + rng.uniform(-2, 2, (n, 1, 2))
    return out.astype(np.float32)


def shape_model_args() -> dict[str, Any]:
    """``semantic_cnn_shape``'s shape model, fitted by its own datamodule hook on training landmarks."""
    args = {**TINY_SEMANTIC, "n_landmarks": N_LANDMARKS, "shape_components": 3}
    train = SimpleNamespace(landmarks=face_landmarks(40, 48, 1))
    dm = SimpleNamespace(registered_name="contract", tables={"train": train})
    return {**args, **get_method_class("semantic_cnn_shape").datamodule_kwargs(dm, args)}


def anet_ids(model: Any) -> list[int]:
    ids = model.anet_identity_ids.tolist()
    return [ids[i % len(ids)] for i in range(BATCH)]


def classifier_ids(model: Any) -> list[int]:
    ids = model.classifier_identity_ids.tolist()
    return [ids[i % len(ids)] for i in range(BATCH)]


ANET_IDS = {"train_identities": IDENTITIES, "classifier_identity_fraction": 1 / 3}
CASES: dict[str, Case] = {
    "anet": Case({"input_size": 32, "anet": TINY_ANET, **ANET_IDS}),
    "anet_identity": Case({"input_size": 32, "anet": TINY_ANET, **ANET_IDS}, identities=anet_ids,
                          outputs=lambda m: len(m.anet_ids), attribute_probabilities=False),
    "branching": Case({**TINY_BRANCHING, "branch_from": "conv4"},
                      parent=("branching_identity", {**TINY_BRANCHING, "identity_ids": IDENTITIES}, ())),
    "branching_identity": Case({**TINY_BRANCHING, "identity_ids": IDENTITIES}, outputs=lambda m: len(IDENTITIES),
                               attribute_probabilities=False),
    "dlib_probe": Case({"workers": 1}, embedding=True),
    "independent_cnns": Case({"input_size": 40, "conv_filters": [6, 8, 8], "fc_units": 8}),
    "lacnn": Case({"input_size": 48, "fc_width": 16}, landmarks=True),
    "lacnn_baseline": Case({"input_size": 48, "fc_width": 16}),
    "lnet_o": Case({"input_size": 96, "lnet": TINY_LNET}),
    "lnet_plus": Case({"input_size": 48, "lnet": TINY_LNET, "scale_range": [1.0, 1.5]}),
    "lnet_s": Case({"input_size": 96}, parent=("lnet_o", {"input_size": 96, "lnet": TINY_LNET}, ("lnet_o_trained",))),
    "lnets_anet": Case({"input_size": 48, "anet": TINY_ANET, **ANET_IDS, "classifier_c": 0.1},
                       parent=("anet", {"input_size": 32, "anet": TINY_ANET, **ANET_IDS}, ("anet_trained",)),
                       identities=classifier_ids),
    "majority": Case({"input_size": 16}),
    "mcnn": Case(TINY_MCNN),
    "mcnn_aux": Case(TINY_MCNN, parent=("mcnn", TINY_MCNN, ())),
    "semantic_cnn": Case(TINY_SEMANTIC),
    # outputs: 3 shape modes + the in-plane angle
    "semantic_cnn_shape": Case(make_args=shape_model_args, landmarks=True, outputs=lambda m: 3 + 1,
                               attribute_probabilities=False),
    "timm": Case({"backbone": "test_resnet", "input_size": 32}),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def save_checkpoint(model: L.LightningModule, path: Path) -> str:
    """What ``Trainer.save_checkpoint`` stores for a model: state dict, hyper-parameters, the
    Lightning version, and what the model's ``on_save_checkpoint`` adds."""
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": L.__version__}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return str(path)


def build(name: str, tmp_path: Path) -> tuple[Any, Case]:
    case = CASES.get(name, Case())   # a method without an entry runs at its defaults (give it one to be fast)
    args = dict(case.make_args() if case.make_args else case.args)
    if case.parent:
        parent_name, parent_args, flags = case.parent
        parent = create_method(parent_name, TASK, **parent_args)
        for flag in flags:                       # what the earlier stage's training sets
            getattr(parent, flag).fill_(True)
        args["init_checkpoint"] = save_checkpoint(parent, tmp_path / f"{parent_name}.ckpt")
    torch.manual_seed(0)
    return create_method(name, TASK, **args), case


def make_batch(model: Any, case: Case, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    s = model.image_size
    batch: dict[str, Any] = {
        "image": torch.randn(BATCH, model.in_chans, s, s, generator=g),
        "label": torch.tensor([[0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1]])[:BATCH],
        "index": torch.arange(BATCH) + BATCH * seed,
        "identity": torch.tensor(case.identities(model)),
        "box": torch.tensor([[0.25 * s, 0.25 * s, 0.5 * s, 0.5 * s]] * BATCH),
    }
    if case.landmarks:
        batch["landmarks"] = torch.from_numpy(face_landmarks(BATCH, s, seed + 10))
    if case.embedding:
        batch["embedding"] = torch.randn(BATCH, 128, generator=g)
    return batch


def fit_closed_form(model: Any, batches: list[dict[str, Any]]) -> None:
    """One training epoch through Lightning: the fit hooks of a method with nothing to optimise."""
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(model, train_dataloaders=loader)


def outputs(model: Any, batch: dict[str, Any], case: Case) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = {"logits": model.logits(batch)}
        if case.attribute_probabilities:
            out["probs"] = model.probabilities(batch)
    return out


@pytest.mark.parametrize("name", method_names())
def test_method_contract(name: str, tmp_path: Path) -> None:
    model, case = build(name, tmp_path)
    cls = get_method_class(name)
    assert type(model) is cls
    batch = make_batch(model, case)
    width = case.outputs(model) if case.outputs else TASK.n_logits

    # logits of the documented shape
    model.eval()
    out = outputs(model, batch, case)
    assert out["logits"].shape == (BATCH, width)
    assert torch.isfinite(out["logits"]).all()
    if case.attribute_probabilities:
        assert out["probs"].shape == (BATCH, TASK.n_logits)

    if cls.gradient_trained:
        # the training loss is finite and its gradient reaches every trainable parameter
        model.train()
        loss, parts = model.training_loss(batch)
        assert loss.dim() == 0 and torch.isfinite(loss), loss
        assert all(torch.isfinite(v).all() for v in parts.values())
        loss.backward()
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert trainable, f"{name}: gradient-trained but nothing requires grad"
        no_grad = [n for n, p in trainable if p.grad is None]
        assert not no_grad, f"{name}: no gradient reaches {no_grad[:5]}"
        bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
        assert not bad, f"{name}: non-finite gradient in {bad[:5]}"
    else:
        # closed form: one epoch of the fit hooks changes the fitted state and predicts finite probabilities
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.train()
        fit_closed_form(model, [make_batch(model, case, seed=i) for i in range(3)])
        after = model.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before), f"{name}: the fit changed nothing"
        model.eval()
        probs = outputs(model, batch, case)["probs"]
        assert probs.shape == (BATCH, TASK.n_logits)
        assert torch.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()

    # checkpoint round trip, reloaded as `facebench predict` does (without the earlier stage's file)
    model.eval()
    expected = outputs(model, batch, case)
    path = save_checkpoint(model, tmp_path / "model.ckpt")
    reloaded = cls.load_from_checkpoint(path, map_location="cpu", init_checkpoint=None).eval()
    got = outputs(reloaded, batch, case)
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"{name}: {key} differ after the checkpoint round trip"

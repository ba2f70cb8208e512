"""Methods made of independent networks: one gradient scale per network (the training loss is the
sum of the per-target losses) and, where the networks are separate modules, each network's own
best validation epoch."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from facebench.core.tasks import TaskSpec, Target
from facebench.lightning_modules.lacnn import LACNNBaseline
from facebench.lightning_modules.mcnn import IndependentCNNs
from facebench.lightning_modules.semantic_cnn import SemanticFeaturesCNN

TASK = TaskSpec((Target("Male"), Target("Smiling"), Target("emotion", "multiclass", classes=("a", "b", "c"))), name="t")
TINY_SEMANTIC = {"conv_channels": [4, 4, 8], "fc_units": 16, "pixel_standardize": False}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_batch(size: int, channels: int, n: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.stack([torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g),
                          torch.randint(0, 3, (n,), generator=g)], dim=1)
    return {"image": torch.randn(n, channels, size, size, generator=g), "label": labels}


def gradients(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


MODELS = {
    "semantic_cnn per_task_networks": lambda: SemanticFeaturesCNN(TASK, per_task_networks=True, **TINY_SEMANTIC),
    "independent_cnns": lambda: IndependentCNNs(TASK, input_size=40, conv_filters=(6, 8, 8), fc_units=8),
    "lacnn_baseline per-trait": lambda: LACNNBaseline(TASK, input_size=64, fc_width=16, rotation_angles=[]),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_network_gets_its_own_loss_gradient_at_full_scale(name: str) -> None:
    """The gradient of the training loss is, on each network, exactly the gradient of its own
    target's loss: the sum of the per-target gradients, each zero outside its own network."""
    model = MODELS[name]()
    model.train()
    torch.manual_seed(0)
    b = make_batch(model.image_size, model.in_chans)
    logits = model.logits(b)
    per_target = model.target_losses(logits, b)
    loss = model.compute_loss(logits, b)
    assert model.sums_target_losses
    torch.testing.assert_close(loss, per_target.sum())
    full = gradients(model, loss)
    own = [gradients(model, per_target[i]) for i in range(len(TASK.targets))]
    for j, g in enumerate(full):
        torch.testing.assert_close(g, sum(o[j] for o in own))
    # each parameter entry moves with at most one target's loss (networks share nothing)
    for j in range(len(full)):
        assert int(sum((o[j] != 0).int() for o in own).max()) <= 1
    # ... and a mean would have divided each network's gradient by the number of targets
    assert not torch.allclose(full[0], gradients(model, per_target.mean())[0])


def test_joint_networks_keep_the_mean():
    joint = SemanticFeaturesCNN(TASK, **TINY_SEMANTIC)
    b = make_batch(48, 1)
    logits = joint.logits(b)
    assert not joint.sums_target_losses and joint.network_selection is None
    torch.testing.assert_close(joint.compute_loss(logits, b), joint.target_losses(logits, b).mean())


def rows(acc: list[float]) -> pd.DataFrame:
    return pd.DataFrame([{"target": t, "class": "", "metric": "accuracy", "value": a} for t, a in zip(TASK.names, acc)])


def test_each_network_keeps_its_own_best_epoch(tmp_path):
    """Network i ends with the weights of the epoch where target i's validation accuracy peaked,
    through a checkpoint round trip, as the worker evaluates it (the last checkpoint)."""
    model = SemanticFeaturesCNN(TASK, per_task_networks=True, **TINY_SEMANTIC)
    assert model.evaluation_checkpoint == "last"
    history = [[0.6, 0.7, 0.5], [0.8, 0.6, 0.4], [0.7, 0.9, 0.45]]   # best epochs: 1, 2, 0
    snapshots = []
    for epoch, acc in enumerate(history):
        with torch.no_grad():
            for net in model.networks:
                net.out.bias.fill_(float(epoch))   # the epoch is readable from the weights
        snapshots.append([net.out.bias.clone() for net in model.networks])
        model.select_networks_at(rows(acc), epoch)
    assert model.network_selection.epochs == [1, 2, 0]
    ckpt: dict = {}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "last.ckpt")
    restored = SemanticFeaturesCNN(TASK, per_task_networks=True, **TINY_SEMANTIC)
    restored.on_load_checkpoint(torch.load(tmp_path / "last.ckpt", weights_only=False))
    restored.on_test_start()
    for i, (net, epoch) in enumerate(zip(restored.networks, [1, 2, 0])):
        torch.testing.assert_close(net.out.bias, snapshots[epoch][i])


def test_soft_target_loss_averages_over_rows_with_a_distribution():
    """Rows whose soft label is all zero (no rater distribution: unknown, or a sample of another
    dataset in a mixture) are left out of the soft cross-entropy instead of diluting it."""
    from facebench.lightning_modules.losses import target_losses

    task = TaskSpec((Target("emotion", "multiclass", classes=("a", "b", "c")),))
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    q = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([[0], [1], [-1]])
    got = target_losses(task, logits, labels, soft_targets={"emotion": q})
    expected = -(q[:2] * torch.log_softmax(logits[:2], dim=1)).sum(1).mean()
    torch.testing.assert_close(got[0], expected)
    zero = target_losses(task, logits, labels, soft_targets={"emotion": torch.zeros_like(q)})
    assert zero[0] == 0.0

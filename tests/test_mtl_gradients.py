"""Per-task gradients for the gradient weightings (lightning_modules/weighting/jacobian.py): the batched
backward pass gives the rows of the loop of K backward passes, on the shared parameters and on the
shared representation, for every method with a trunk and heads (mtl_cnn, MCNN, timm); the
representation setting (MGDA-UB) hands the trunk exactly J^T s and the heads the weighted loss;
what is refused is named; tasks without labels sit out. DDP for both settings: test_weighting.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facebench.core.tasks import TaskSpec
from facebench.lightning_modules.base import FaceAttributeTask
from facebench.lightning_modules.baselines import TimmBaseline
from facebench.lightning_modules.mcnn import MCNN
from facebench.lightning_modules.mtl_cnn import MultiTaskCNN
from facebench.lightning_modules.weighting.base import StepContext
from facebench.lightning_modules.weighting.jacobian import task_jacobian
from facebench.lightning_modules.weighting.pareto import min_norm_weights

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = TaskSpec.binary_attributes(["Male", "Smiling", "Wearing_Lipstick", "Bald", "Goatee", "Chubby"], name="mtl")


def batch(n: int = 8, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, size, size, generator=g), "label": torch.randint(0, 2, (n, 6), generator=g)}


def build(method: str, mtl: dict | None = None) -> FaceAttributeTask:
    torch.manual_seed(0)
    if method == "mtl_cnn":
        return MultiTaskCNN(TASK, width=0.0625, input_size=32, mtl=mtl)
    if method == "mcnn":
        return MCNN(TASK, input_size=40, conv_filters=(8, 8, 8), fc_units=8, dropout=0.0, mtl=mtl)
    return TimmBaseline(TASK, backbone="test_efficientnet", input_size=32, mtl=mtl)


METHODS = ["mtl_cnn", "mcnn", "timm"]


@pytest.mark.parametrize("method", METHODS)
def test_heads_of_the_shared_representation_give_the_logits(method: str) -> None:
    model = build(method).eval()
    b = batch(size=40 if method == "mcnn" else 32)
    h, heads = model.shared_representation(b)
    torch.testing.assert_close(heads(h), model.logits(b))
    # the representation is the output of exactly the shared parameters' layers
    grads = torch.autograd.grad(h.sum(), [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    reached = {id(p) for p, g in zip([p for p in model.parameters() if p.requires_grad], grads) if g is not None}
    assert reached == {id(p) for p in model.shared_parameters()}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("space", ["parameters", "representation"])
def test_batched_backward_gives_the_rows_of_the_loop(method: str, space: str) -> None:
    model = build(method)
    b = batch(size=40 if method == "mcnn" else 32)
    if space == "representation":
        h, heads = model.shared_representation(b)
        losses, inputs = model.target_losses(heads(h), b), [h]
    else:
        losses, inputs = model.target_losses(model.logits(b), b), model.shared_parameters()
    loop = task_jacobian(losses, inputs, "loop")
    batched = task_jacobian(losses, inputs, "batched")
    assert loop.shape == (6, sum(x.numel() for x in inputs)) and float(loop.abs().max()) > 0
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-7)


def test_a_training_step_is_the_same_batched_or_looped() -> None:
    b = batch()
    grads = {}
    for mode in ("batched", "loop"):
        model = build("mtl_cnn", {"weighting": "pcgrad", "seed": 3, "jacobian": mode})
        loss, _ = model.training_loss(b)
        loss.backward()
        grads[mode] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(grads["batched"], grads["loop"], rtol=1e-5, atol=1e-7)


def test_representation_gradients_give_the_trunk_j_transpose_s_and_the_heads_the_weighted_loss() -> None:
    """MGDA on the representation (MGDA-UB): the weights are the min-norm weights of the
    representation's task gradients; the trunk's gradient is the backward of the trunk with the
    combined representation gradient, the heads' that of the weighted loss, the loss its value."""
    b = batch()
    model = build("mtl_cnn", {"weighting": "mgda", "gradients": "representation"})
    h, heads = model.shared_representation(b)
    losses = model.target_losses(heads(h), b)
    g = torch.stack([torch.autograd.grad(losses[k], h, retain_graph=True)[0].reshape(-1) for k in range(6)])
    alpha = min_norm_weights((g @ g.T).double()).float()
    trunk = [p for p in model.networks[0].trunk.parameters()]
    expected_trunk = torch.autograd.grad(h, trunk, grad_outputs=(alpha @ g).view_as(h), retain_graph=True)
    expected_head = torch.autograd.grad((alpha * losses).sum(), list(model.networks[0].head.parameters()))
    model.zero_grad()
    loss, parts = model.training_loss(b)
    assert float(loss) == pytest.approx(float((alpha * losses).sum()), rel=1e-5)
    loss.backward()
    for p, e in zip(trunk, expected_trunk):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-7)
    for p, e in zip(model.networks[0].head.parameters(), expected_head):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-7)
    # and it is not the parameter-level combination (a different problem, hence an approximation)
    model_p = build("mtl_cnn", {"weighting": "mgda"})
    loss_p, _ = model_p.training_loss(b)
    loss_p.backward()
    assert not torch.allclose(model_p.networks[0].trunk[0].weight.grad, trunk[0].grad, atol=1e-6)


def test_what_the_representation_setting_refuses_is_named() -> None:
    with pytest.raises(ValueError, match="db_mtl.*parameter space"):
        build("mtl_cnn", {"weighting": "db_mtl", "gradients": "representation"})
    with pytest.raises(ValueError, match="gradient weightings.*'equal'"):
        build("mtl_cnn", {"weighting": "equal", "gradients": "representation"})
    with pytest.raises(ValueError, match="gradients must be one of"):
        build("mtl_cnn", {"weighting": "mgda", "gradients": "activations"})
    with pytest.raises(ValueError, match="jacobian must be one of"):
        build("mtl_cnn", {"weighting": "mgda", "jacobian": "vmap"})

    class TrunkOnly(FaceAttributeTask):
        method_name = "trunk_only"

        def configure_models(self) -> None:
            self.trunk, self.head = nn.Linear(4, 4), nn.Linear(4, self.task.n_logits)

        def shared_parameters(self) -> list[nn.Parameter]:
            return list(self.trunk.parameters())

    TrunkOnly(TASK, mtl={"weighting": "mgda"})
    with pytest.raises(ValueError, match="'trunk_only'.*shared_representation"):
        TrunkOnly(TASK, mtl={"weighting": "mgda", "gradients": "representation"})


@pytest.mark.parametrize("name, gradients", [(n, g) for n in ("pcgrad", "nash_mtl", "db_mtl", "upgrad", "gradvac")
                                             for g in ("parameters", "representation")
                                             if (n, g) != ("db_mtl", "representation")])   # refused (above)
def test_a_task_without_labels_sits_out_the_step(name: str, gradients: str) -> None:
    b = batch()
    b["label"][:, 3] = -1                                     # Bald: no label in this batch
    model = build("mtl_cnn", {"weighting": name, "gradients": gradients})
    loss, parts = model.training_loss(b)
    assert float(parts["mtl_weight/Bald"]) == 0.0 and float(parts["mtl_weight/Male"]) > 0.0
    loss.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    assert float(model.networks[0].head.weight.grad[3].abs().max()) == 0.0      # its head does not move


def test_step_context_without_representation_is_an_error() -> None:
    model = build("mtl_cnn", {"weighting": "mgda", "gradients": "representation"})
    losses = model.target_losses(model.logits(batch()), batch())
    with pytest.raises(ValueError, match="shared representation"):
        model.multitask(losses, StepContext(shared=model.shared_parameters))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_cost_script_quick_mode_prints_every_variant(capsys) -> None:
    from facebench.benchmarks.perf.mtl_gradients import VARIANTS, main

    assert main(["--part", "step", "--quick"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip() and line.split()[0] in VARIANTS}
    assert set(rows) == set(VARIANTS)
    assert float(rows["equal"][0]) == 1.0 and all(float(r[0]) > 0 for r in rows.values())
    assert float(rows["loop"][0]) > float(rows["representation"][0])     # K trunk passes vs one


def test_the_epoch_cost_probe_limits_a_method_with_its_own_trainer_block() -> None:
    """fer's resnet18 sets max_epochs: 30 in its own trainer block, which beats the suite's: the
    probe's overrides must reach it, or a 1-epoch probe trains 30 epochs."""
    from facebench.benchmarks.overrides import parse_sets
    from facebench.benchmarks.perf.suite_epoch_cost import probe_overrides
    from facebench.benchmarks.suite import load_suite

    suite = load_suite("fer", overrides=parse_sets(probe_overrides("resnet18", 4)))
    trainer = next(r for r in suite.runs if r.method_key == "resnet18").config["trainer"]
    assert trainer["max_epochs"] == 1 and trainer["limit_train_batches"] == 4
    assert {r.seed for r in suite.runs} == {0}

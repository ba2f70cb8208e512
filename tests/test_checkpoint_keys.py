"""Checkpoints of earlier runs must keep loading: the state-dict keys of the methods whose networks
live in their own files (semantic_cnn_networks.py, shape_model.py, branching_networks.py) are
pinned here, written out from the layer names, not read from the code under test."""

from __future__ import annotations

import pytest
import torch

from facebench.core.tasks import TaskSpec
from facebench.lightning_modules.registry import create_method

TASK = TaskSpec.binary_attributes(["a", "b", "c"], name="toy")
TINY_SEMANTIC = {"conv_channels": [4, 4, 8], "fc_units": 16}
BN = ("bias", "num_batches_tracked", "running_mean", "running_var", "weight")

pytestmark = pytest.mark.usefixtures("one_thread")


def semantic_network_keys(i: int) -> set[str]:
    convs = {f"networks.{i}.blocks.{b}.conv.{p}" for b in range(3) for p in ("weight", "bias")}
    return convs | {f"networks.{i}.{layer}.{p}" for layer in ("fc", "out") for p in ("weight", "bias")}


INPUT_NORM = {"input_norm.mean", "input_norm.std", "input_norm.fitted"}


def test_semantic_cnn_keys():
    torch.manual_seed(0)
    assert set(create_method("semantic_cnn", TASK, **TINY_SEMANTIC).state_dict()) == INPUT_NORM | semantic_network_keys(0)
    per_task = create_method("semantic_cnn", TASK, per_task_networks=True, **TINY_SEMANTIC)
    assert set(per_task.state_dict()) == INPUT_NORM | set().union(*(semantic_network_keys(i) for i in range(3)))
    shape = create_method("semantic_cnn_shape", TASK, n_landmarks=5, shape_components=3, **TINY_SEMANTIC)
    pca = {f"shape_pca.{k}" for k in ("reference", "mean", "components", "scales", "angle_std", "fitted")}
    assert set(shape.state_dict()) == INPUT_NORM | semantic_network_keys(0) | pca


def branching_keys() -> set[str]:
    def with_bn(step: str) -> set[str]:
        return {f"net.steps.{step}.conv.weight"} | {f"net.steps.{step}.bn.{k}" for k in BN}

    keys = with_bn("conv1") | with_bn("bottleneck320") | {"net.steps.fc.weight", "net.steps.fc.bias"}
    for k in range(2, 24, 2):        # a module's 1x1 step owns its BN
        keys |= with_bn(f"conv{k}")
    for k in range(3, 24, 2):        # its 3x3 step owns the shortcut where the shape changes
        keys.add(f"net.steps.conv{k}.conv.weight")
    return keys | {f"net.steps.conv{k}.shortcut.weight" for k in (3, 5, 7, 21)}


@pytest.mark.parametrize("name,args", [("branching_identity", {"identity_ids": [0, 1, 2, 3]}),
                                       ("branching", {"branch_from": "conv19"})])
def test_branching_keys(name, args):
    model = create_method(name, TASK, input_size=32, **args)
    assert set(model.state_dict()) == branching_keys()

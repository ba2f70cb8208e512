"""LNets+ANet (Liu et al., ICCV 2015): locally shared convolution, density-peak localisation,
identity losses, every stage's shapes and hand-off, the linear classifiers, the analyses, and a
tiny end-to-end cascade through the runner."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import facebench.lightning_modules.all  # noqa: F401  (registers the methods)
from facebench.benchmarks.analyses import run_analysis
from facebench.benchmarks.analyses.lnets_anet import attribute_groups
from facebench.core.tasks import TaskSpec
from facebench.lightning_modules.lnets_anet import (ANet, ANetConfig, LNet, LNetConfig, LocalizationConfig, box_iou_xywh,
                                          calibrate_scale, crop_boxes, density_peaks, densest_region, identity_retrieval,
                                          load_pretrained_convs, localization_rows, region_box, region_moments_box,
                                          similarity_loss, split_identities)
from facebench.lightning_modules.local_conv import LocallySharedConv2d, cell_index
from facebench.lightning_modules.registry import create_method

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TASK = TaskSpec.binary_attributes([f"attr{i}" for i in range(6)], name="toy")
TINY_LNET = {"channels": [8, 16, 16, 16, 16], "fc_dim": 32, "dropout": 0.0, "s_size": 80, "local_response_norm": False}
TINY_ANET = {"input_size": 32, "channels": [8, 16, 16, 16], "kernels": [3, 3, 3, 3], "fc_dim": 24}


def _reference_locally_shared(layer: LocallySharedConv2d, x: torch.Tensor) -> torch.Tensor:
    """Eq. 4 by brute force: every output position with its cell's filter."""
    p, k = layer.padding, layer.kernel_size
    xp = F.pad(x, (p, p, p, p))
    ho, wo = layer.output_size(x.shape[2], x.shape[3])
    cells = cell_index(ho, wo, layer.grid)
    out = torch.zeros(x.shape[0], layer.out_channels, ho, wo, dtype=x.dtype)
    for i in range(ho):
        for j in range(wo):
            g = int(cells[i, j])
            out[:, :, i, j] = torch.einsum("bckl,ockl->bo", xp[:, :, i:i + k, j:j + k], layer.weight[g]) + layer.bias[g]
    return out


@pytest.mark.parametrize("grid,size,padding", [((2, 2), (10, 10), 0), ((3, 2), (11, 9), 1), ((1, 1), (6, 7), 0)])
def test_locally_shared_conv_equals_reference_loop(grid: tuple[int, int], size: tuple[int, int], padding: int) -> None:
    torch.manual_seed(0)
    layer = LocallySharedConv2d(5, 7, 3, grid=grid, padding=padding).double()
    x = torch.randn(2, 5, *size, dtype=torch.double)
    torch.testing.assert_close(layer(x), _reference_locally_shared(layer, x))
    # the cells really have different filters: a plain convolution with cell 0's filters differs
    if layer.n_cells > 1:
        plain = F.conv2d(x, layer.weight[0], layer.bias[0], padding=padding)
        assert not torch.allclose(layer(x), plain)


def test_interweaved_equals_aligned_on_every_window() -> None:
    torch.manual_seed(1)
    layer = LocallySharedConv2d(4, 6, 3, grid=(2, 2)).double()
    x = torch.randn(2, 4, 15, 13, dtype=torch.double)
    dense = layer.interweaved(x, (10, 9), stride=2)
    assert dense.shape == (2, 3, 3, 6, 8, 7)
    for i in range(3):
        for j in range(3):
            torch.testing.assert_close(dense[:, i, j], layer(x[:, :, 2 * i:2 * i + 10, 2 * j:2 * j + 9]))
    with pytest.raises(ValueError, match="padding=0"):
        LocallySharedConv2d(4, 6, 3, padding=1).interweaved(x.float(), (10, 9))


def test_anet_dense_equals_forward_on_c2_windows() -> None:
    torch.manual_seed(2)
    anet = ANet(ANetConfig(**TINY_ANET)).double().eval()
    x = torch.randn(2, 3, 40, 44, dtype=torch.double)
    feats, energy = anet.dense(x)
    assert feats.shape == (2, 3, 4, 24) and energy.shape == (2, 3, 4)
    c2 = anet.trunk(x)
    w = anet.window
    for i in range(3):
        for j in range(4):
            window = c2[:, :, i:i + w, j:j + w]
            torch.testing.assert_close(feats[:, i, j], anet.fc(anet.pool(anet.local(window))))
            torch.testing.assert_close(energy[:, i, j], anet.local(window).mean(dim=(1, 2, 3)))
    # at the input size the dense evaluation is the aligned forward
    torch.testing.assert_close(anet.dense(x[:, :, :32, :32])[0][:, 0, 0], anet(x[:, :, :32, :32]))


def _blob(h: int, w: int, cy: float, cx: float, sd: float, amp: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return amp * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sd ** 2))


def test_density_peak_rule_on_two_blobs() -> None:
    """Eq. 3: sigma is the distance to the nearest denser position (the top position: its largest
    distance); the region proposed is the larger / denser blob, not the sharper isolated spike."""
    h = w = 14
    large = _blob(h, w, 9, 9, 2.0, 1.0)
    spike = _blob(h, w, 2, 3, 0.5, 1.3)          # higher single value, much less mass
    maps = torch.stack([large + spike, spike + _blob(h, w, 10, 4, 1.0, 0.4)])
    peaks = density_peaks(maps, 3)
    top = peaks.rho[0].argmax()
    assert divmod(int(top), w) == (9, 9)
    assert peaks.is_top[0, top] and peaks.sigma[0, top] == pytest.approx(math.hypot(9, 9))
    assert peaks.sigma[0, 9 * w + 10] == pytest.approx(1.0)   # next to the peak: one cell
    assert peaks.sigma[0, 2 * w + 3] > 5                      # the spike is far from any denser position
    assert torch.all(peaks.d >= peaks.rho - 1e-6)
    region = densest_region(maps, LocalizationConfig())
    ys, xs = torch.nonzero(region[0], as_tuple=True)
    assert ys.float().mean() == pytest.approx(9, abs=0.6) and xs.float().mean() == pytest.approx(9, abs=0.6)
    assert not region[0, :5, :6].any()
    # second map: the spike is denser than the weak blob -> the spike wins
    ys, xs = torch.nonzero(region[1], as_tuple=True)
    assert ys.float().mean() < 5
    # the box of the region, in input pixels, surrounds the blob's receptive-field centres
    offset, stride = LNet.cell_geometry()
    box = region_box(region, 256, offset, stride)[0] * 256
    centre = box[:2] + box[2:] / 2
    assert torch.allclose(centre, torch.tensor([offset + 9 * stride] * 2), atol=stride / 2)


def test_density_peak_handles_flat_and_empty_maps() -> None:
    region = densest_region(torch.zeros(2, 5, 6), LocalizationConfig())
    assert region.all()                                       # nothing responds: the whole image
    box = region_box(region, 100, *LNet.cell_geometry())
    assert torch.all(box >= 0) and torch.all(box[:, :2] + box[:, 2:] <= 1 + 1e-6)


def test_lnet_cell_geometry_matches_receptive_fields() -> None:
    """The centre of a C5 cell's receptive field (centroid of its input gradient, with uniform
    filters and average pooling of the same geometry so that the field is symmetric) is
    ``offset + stride * j``."""
    offset, stride = LNet.cell_geometry()
    assert stride == 16 and LNet.map_size(227) == 13
    lnet = LNet(1, 400, LNetConfig(**TINY_LNET)).double()
    lnet.pool = torch.nn.AvgPool2d(3, 2)
    with torch.no_grad():
        for conv in lnet.convs:
            conv.weight.fill_(1.0 / conv.weight[0].numel())
            conv.bias.zero_()
    x = torch.ones(1, 3, 400, 400, dtype=torch.double, requires_grad=True)
    lnet.features(x)[0, :, 12, 10].sum().backward()
    g = x.grad[0].sum(0)
    coords = torch.arange(400, dtype=torch.double) + 0.5
    cy, cx = (g.sum(1) * coords).sum() / g.sum(), (g.sum(0) * coords).sum() / g.sum()
    assert cy.item() == pytest.approx(offset + 12 * stride) and cx.item() == pytest.approx(offset + 10 * stride)


def test_recall_at_iou_on_hand_made_boxes() -> None:
    true = np.array([[0.1, 0.1, 0.4, 0.4]] * 4)
    pred = np.array([[0.1, 0.1, 0.4, 0.4],      # IoU 1
                     [0.2, 0.1, 0.4, 0.4],      # IoU 0.3 / 0.5 = 0.6
                     [0.3, 0.1, 0.4, 0.4],      # IoU 0.2 / 0.6 = 1/3
                     [0.6, 0.6, 0.2, 0.2]])     # no overlap
    iou = box_iou_xywh(pred, true)
    np.testing.assert_allclose(iou, [1.0, 0.6, 1 / 3, 0.0], atol=1e-9)
    rows = localization_rows({"face_box": pred, "true_box": true, "head_box": np.array([[0, 0, 1, 1], [0, 0, 0.3, 0.5],
                                                                                       [0.1, 0.1, 0.4, 0.2], [0.3, 0.3, 0.1, 0.1]])})
    value = rows.set_index(["target", "metric"])["value"]
    assert value[("face_box", "recall@iou0.5")] == 0.5
    assert value[("face_box", "recall@iou0.3")] == 0.75
    assert value[("face_box", "recall@iou0.9")] == 0.25
    assert value[("face_box", "mean_iou")] == pytest.approx((1 + 0.6 + 1 / 3) / 4)
    assert value[("head_shoulder_box", "mean_face_coverage")] == pytest.approx((1 + 0.5 + 0.5 + 1 / 16) / 4)
    assert value[("head_shoulder_box", "recall@coverage0.9")] == 0.25
    assert localization_rows({"probs": pred}).empty


def test_moments_box_equals_extent_on_uniform_regions_and_follows_the_response() -> None:
    offset, stride = LNet.cell_geometry()
    response = torch.zeros(2, 7, 7)
    response[0, 2:4, 3:6] = 1.0
    response[1, 1:4, 1:4] = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 3.0], [0.0, 0.0, 0.0]])
    region = response > 0
    moments = region_moments_box(response, region, 128, offset, stride)
    torch.testing.assert_close(moments[0], region_box(region, 128, offset, stride)[0])
    # two cells weighted 1:3 along x: centroid 3/4 of the way, width sqrt(12 (3/16 + 1/12)) cells
    cx = (offset + stride * 2.75) / 128
    w = math.sqrt(12 * (3 / 16 + 1 / 12)) * stride / 128
    torch.testing.assert_close(moments[1], torch.tensor([cx - w / 2, (offset + 2 * stride - stride / 2) / 128, w, stride / 128]))
    with pytest.raises(ValueError, match="localization.box"):
        LocalizationConfig(box="corners")


def test_face_scale_calibrated_on_val_and_applied_to_every_split(tmp_path: Path) -> None:
    true = np.array([[0.2, 0.2, 0.2, 0.2]] * 3)
    pred = np.array([[0.25, 0.25, 0.1, 0.1]] * 3)          # centred, half the side: IoU >= 0.5 from a factor sqrt(2)
    assert calibrate_scale(pred, true) == 1.45
    o = create_method("lnet_o", TASK, input_size=96, lnet=TINY_LNET)
    o.lnet_o_trained.fill_(True)
    s = create_method("lnet_s", TASK, input_size=96, init_checkpoint=_save(o, tmp_path / "o.ckpt"), calibrate_face_scale=True)
    s._buffers_out = {}
    s.collected = {"val": {"face_box": pred, "true_box": true}, "test": {"face_box": pred * [1, 1, 0.5, 0.5], "true_box": true}}
    s.on_test_epoch_end()
    np.testing.assert_allclose(s.collected["test"]["face_box"][0], [0.23875, 0.23875, 0.0725, 0.0725])
    rows = s.evaluate_predictions("val", {**s.collected["val"], "probs": np.full((3, TASK.n_logits), 0.5),
                                          "labels": np.zeros((3, TASK.n_label_slots), dtype=np.int64)})
    value = rows.set_index(["target", "metric"])["value"]
    assert value[("face_box", "face_scale")] == 1.45 and value[("face_box", "recall@iou0.5")] == 1.0
    s.collected = {"test": {"face_box": pred, "true_box": true}}
    with pytest.raises(ValueError, match="needs the val split"):
        s.on_test_epoch_end()


def test_crop_boxes_crops_the_right_pixels() -> None:
    img = torch.zeros(1, 1, 40, 40)
    img[:, :, 10:20, 20:30] = 1.0
    crop = crop_boxes(img, torch.tensor([[0.5, 0.25, 0.25, 0.25]]), 10)
    assert crop.shape == (1, 1, 10, 10) and crop.mean() > 0.95


def test_similarity_loss_pulls_same_identity_together() -> None:
    torch.manual_seed(3)
    ids = torch.tensor([0, 0, 1, 1, 2])
    feats = torch.randn(5, 8, requires_grad=True)
    loss = similarity_loss(feats, ids)
    expected = 0.5 * ((feats[0] - feats[1]).pow(2).sum() + (feats[2] - feats[3]).pow(2).sum()) / 2
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.all(feats.grad[4] == 0)                      # no partner: untouched
    opt = torch.optim.SGD([feats], lr=0.2)
    gap_before = (feats[0] - feats[1]).norm().item()
    other_before = (feats[0] - feats[2]).norm().item()
    for _ in range(20):
        opt.zero_grad()
        similarity_loss(feats, ids).backward()
        opt.step()
    assert (feats[0] - feats[1]).norm().item() < 0.1 * gap_before
    assert (feats[0] - feats[2]).norm().item() > 0.3 * other_before
    assert similarity_loss(torch.randn(3, 4), torch.tensor([0, 1, 2])).item() == 0.0


def test_identity_retrieval_and_split() -> None:
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    clean = F.one_hot(ids, 3).float() + 0.01 * torch.randn(6, 3)
    scores = identity_retrieval(clean, ids)
    assert scores["nn_accuracy"] == 1.0 and scores["verification_auroc"] == pytest.approx(1.0)
    shuffled = identity_retrieval(clean, torch.tensor([0, 1, 2, 0, 1, 2]))
    assert shuffled["nn_accuracy"] < 0.5
    anet_ids, cls_ids = split_identities(range(1, 91), 1 / 9, seed=0)
    assert len(cls_ids) == 10 and len(anet_ids) == 80 and not set(anet_ids) & set(cls_ids)
    assert split_identities(range(1, 91), 1 / 9, seed=0) == (anet_ids, cls_ids)


def _batch(n: int, size: int, ids: list[int] | None = None, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, size, size, generator=g),
            "label": torch.randint(0, 2, (n, TASK.n_label_slots), generator=g),
            "identity": torch.tensor(ids if ids is not None else [0] * n), "index": torch.arange(n),
            "box": torch.tensor([[0.25 * size, 0.25 * size, 0.4 * size, 0.45 * size]] * n)}


def _save(model: torch.nn.Module, path: Path) -> str:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return str(path)


def test_every_stage_shapes_and_hand_off(tmp_path: Path) -> None:
    torch.manual_seed(4)
    ids = list(range(1, 19))
    o = create_method("lnet_o", TASK, input_size=96, lnet=TINY_LNET)
    b = _batch(3, 96, ids=[1, 2, 3])
    assert o.logits(b).shape == (3, TASK.n_logits)
    assert o.lnet_o.response_map(b["image"]).shape == (3, LNet.map_size(96), LNet.map_size(96))
    assert set(o.test_boxes(b["image"])) == {"head_box"}
    o.lnet_o_trained.fill_(True)
    s = create_method("lnet_s", TASK, input_size=96, init_checkpoint=_save(o, tmp_path / "o.ckpt"))
    assert s.lnet_cfg.fc_dim == 32                            # inherited from the lnet_o stage
    torch.testing.assert_close(s.lnet_o.convs[0].weight, o.lnet_o.convs[0].weight)
    torch.testing.assert_close(s.lnet_s.convs[4].weight, o.lnet_o.convs[4].weight)   # init_from_lnet_o
    assert not any(p.requires_grad for p in s.lnet_o.parameters())
    assert s.logits(b).shape == (3, TASK.n_logits)
    head, face = s.face_boxes(b["image"])
    assert head.shape == face.shape == (3, 4)
    assert torch.all(face[:, :2] >= head[:, :2] - 1e-5) and torch.all(face[:, 2:] <= head[:, 2:] + 1e-5)
    s.lnet_s_trained.fill_(True)
    a_id = create_method("anet_identity", TASK, input_size=96, anet=TINY_ANET, train_identities=ids,
                         classifier_identity_fraction=1 / 6, init_checkpoint=_save(s, tmp_path / "s.ckpt"))
    assert a_id.localize and len(a_id.anet_ids) == 15 and a_id.identity_head.out_features == 15
    assert a_id.logits(b).shape == (3, 15)
    a_id.anet_trained.fill_(True)
    a = create_method("anet", TASK, input_size=96, train_identities=ids, init_checkpoint=_save(a_id, tmp_path / "i.ckpt"))
    assert a.localize and a.anet_cfg.fc_dim == 24 and a.logits(b).shape == (3, TASK.n_logits)
    torch.testing.assert_close(a.anet.c3.weight, a_id.anet.c3.weight)
    with pytest.raises(ValueError, match="partitioned the training identities differently"):
        create_method("anet", TASK, input_size=96, train_identities=ids, classifier_identity_fraction=0.5,
                      init_checkpoint=str(tmp_path / "i.ckpt"))
    with pytest.raises(ValueError, match="differ from this stage's configuration"):
        create_method("anet", TASK, input_size=96, train_identities=ids, anet={**TINY_ANET, "fc_dim": 12},
                      init_checkpoint=str(tmp_path / "i.ckpt"))
    a.anet_trained.fill_(True)
    final = create_method("lnets_anet", TASK, input_size=96, train_identities=ids,
                          init_checkpoint=_save(a, tmp_path / "a.ckpt"))
    assert final.view_size == 48 and final.parameter_count(trainable_only=True) == 0
    assert final.multiview_features(b["image"]).shape == (3, 6 * 24)
    assert final.logits(b).shape == (3, TASK.n_logits)
    assert final.flops_per_image() > 0


def test_lnet_plus_hands_its_convolutions_to_lnet_o(tmp_path: Path) -> None:
    """The LNet+ stand-in trains on aligned faces at random scales; LNet_o takes C1-C5 and their
    batch norms, not the FC layers (sec. 4); global max pooling and reflect padding work at any size."""
    torch.manual_seed(6)
    lnet = {**TINY_LNET, "batch_norm": True, "padding_mode": "reflect", "pooling": "global_max"}
    plus = create_method("lnet_plus", TASK, input_size=48, lnet=lnet, scale_range=[1.0, 2.0])
    assert plus.training_sizes() == [48, 64, 80, 96]
    first, last = _overfit(plus, _batch(8, 48), 40, 3e-3)
    assert last < 0.5 * first
    plus.eval()
    assert plus.logits(_batch(3, 48)).shape == (3, TASK.n_logits)
    o = create_method("lnet_o", TASK, input_size=96, init_checkpoint=_save(plus, tmp_path / "plus.ckpt"))
    assert o.lnet_cfg.pooling == "global_max" and o.lnet_cfg.padding_mode == "reflect"     # inherited
    torch.testing.assert_close(o.lnet_o.convs[2].weight, plus.lnet_plus.convs[2].weight)
    torch.testing.assert_close(o.lnet_o.bns[4].running_mean, plus.lnet_plus.bns[4].running_mean)
    assert not torch.equal(o.lnet_o.head[3].weight, plus.lnet_plus.head[3].weight)
    assert o.lnet_o(torch.randn(2, 3, 80, 80)).shape == o.lnet_o(torch.randn(2, 3, 128, 128)).shape == (2, TASK.n_logits)
    with pytest.raises(ValueError, match="differ from LNet_o"):
        create_method("lnet_o", TASK, input_size=96, lnet={**lnet, "channels": [8, 16, 16, 16, 8]},
                      init_checkpoint=str(tmp_path / "plus.ckpt"))
    with pytest.raises(ValueError, match="padding_mode"):
        LNetConfig(padding_mode="wrap")


def test_aligned_anet_without_localizer() -> None:
    a = create_method("anet", TASK, input_size=32, anet=TINY_ANET)
    assert not a.localize and not hasattr(a, "lnet_o")
    assert a.logits(_batch(2, 32)).shape == (2, TASK.n_logits)
    final = create_method("lnets_anet", TASK, input_size=48, anet=TINY_ANET, views=["center", "peak"])
    assert final.multiview_features(_batch(2, 48)["image"]).shape == (2, 48)
    with pytest.raises(ValueError, match="unknown view"):
        create_method("lnets_anet", TASK, anet=TINY_ANET, views=["left_ear"])


def _overfit(model: torch.nn.Module, batch: dict, steps: int, lr: float) -> tuple[float, float]:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    first = last = None
    for _ in range(steps):
        opt.zero_grad()
        loss = model.compute_loss(model.logits(batch), batch)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    return first, last


def test_one_batch_overfit_lnet_and_anet_heads() -> None:
    torch.manual_seed(5)
    lnet = create_method("lnet_o", TASK, input_size=96, lnet={**TINY_LNET, "channels": [16, 32, 32, 32, 32], "fc_dim": 64})
    batch = _batch(8, 96)
    first, last = _overfit(lnet, batch, 60, 3e-3)
    assert last < 0.2 * first
    anet = create_method("anet", TASK, input_size=32, anet=TINY_ANET)
    batch = _batch(8, 32, seed=1)
    first, last = _overfit(anet, batch, 60, 3e-3)
    assert last < 0.2 * first
    anet.eval()
    assert torch.equal(TASK.predictions(anet.probabilities(batch)), batch["label"])


def test_identity_pretraining_step_learns_identities() -> None:
    torch.manual_seed(6)
    ids = [1, 1, 2, 2, 3, 3, 4, 4]
    model = create_method("anet_identity", TASK, input_size=32, anet=TINY_ANET, train_identities=[1, 2, 3, 4, 5],
                          classifier_identity_fraction=0.2, identity_split_seed=3)
    held_out = model.classifier_ids[0]
    batch = _batch(8, 32, ids=[i if i != held_out else 1 + (held_out % 5) for i in ids])
    batch["identity"][0] = held_out                           # a classifier identity: never trained on
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.log_dict = lambda *a, **k: None                     # outside a Trainer
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = model.training_step(batch, 0)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    keep = batch["identity"] != held_out
    with torch.no_grad():
        pred = model.logits(batch).argmax(1)
    assert torch.equal(model.anet_identity_ids[pred[keep]], batch["identity"][keep])


def test_linear_classifiers_fit_and_live_in_buffers() -> None:
    torch.manual_seed(7)
    final = create_method("lnets_anet", TASK, input_size=48, anet=TINY_ANET)
    x = torch.randn(200, final.classifier_weight.shape[1])
    y = torch.stack([(x[:, i] > 0).long() for i in range(TASK.n_logits)], 1)
    y[:, 5] = 1                                               # one class only: the prior
    y[:3, 0] = -1                                             # missing labels are skipped
    final._train_parts = [(x, y, torch.arange(200) // 10)]
    final.fit_classifiers()
    assert bool(final.classifier_fitted) and "classifier_weight" in final.state_dict()
    logits = F.linear(x, final.classifier_weight, final.classifier_bias)
    acc = ((logits[:, :5] > 0).long() == y[:, :5]).float()[3:].mean()
    assert acc > 0.97
    assert torch.all(logits[:, 5] > 0) and torch.all(final.classifier_weight[5] == 0)
    assert all(min(abs(c - g) / g for g in (0.001, 0.01, 0.1, 1.0)) < 1e-6 for c in final.classifier_c_chosen[:5].tolist())


def test_classifier_c_is_not_chosen_from_folds_missing_a_class() -> None:
    """An attribute whose positives sit on one identity cannot be cross-validated over 3 identity
    folds (a training fold has no positive and every score is nan); it keeps the first C, quietly,
    while a well-spread attribute's C is still chosen by the folds."""
    import warnings

    torch.manual_seed(3)
    final = create_method("lnets_anet", TASK, input_size=48, anet=TINY_ANET, classifier_c=[0.5, 0.001])
    x = torch.randn(200, final.classifier_weight.shape[1])
    groups = torch.arange(200) // 10                          # 20 identities of 10 images
    y = torch.stack([(x[:, i] > 0).long() for i in range(TASK.n_logits)], 1)
    y[:, 1] = (groups < 1).long()                             # 10 positives, all on identity 0
    final._train_parts = [(x, y, groups)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # no FitFailedWarning / nan-score warning
        final.fit_classifiers()
    assert final.classifier_c_chosen[1].item() == pytest.approx(0.5)
    assert final.classifier_c_chosen[0].item() == pytest.approx(0.5)   # separable: the larger C wins the folds


def test_pretrained_weights_offline_error_and_local_file(tmp_path: Path) -> None:
    import torchvision

    cfg = LNetConfig(channels=(64, 192, 384, 256, 256), fc_dim=16)
    lnet = LNet(2, 96, cfg)
    alexnet = torchvision.models.alexnet(weights=None)
    torch.save(alexnet.state_dict(), tmp_path / "alexnet.pth")
    load_pretrained_convs(lnet, str(tmp_path / "alexnet.pth"))
    torch.testing.assert_close(lnet.convs[2].weight, alexnet.features[6].weight)
    with pytest.raises(ValueError, match="lnet.channels"):
        load_pretrained_convs(LNet(2, 96, LNetConfig(**TINY_LNET)), str(tmp_path / "alexnet.pth"))
    with pytest.raises(FileNotFoundError, match="missing"):
        load_pretrained_convs(lnet, str(tmp_path / "nothing.pth"))
    cache = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    if not cache.is_file():   # offline (the test machines): a one-line error, not a hang or a traceback
        with pytest.raises(RuntimeError, match="offline"):
            load_pretrained_convs(lnet, "torchvision")


def test_attribute_grouping_analysis(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=16), rng.normal(size=16)
    weight = np.stack([a + 0.05 * rng.normal(size=16) for _ in range(3)] + [b + 0.05 * rng.normal(size=16) for _ in range(3)])
    names = [f"attr{i}" for i in range(6)]
    groups = attribute_groups(weight, names, 2).set_index("attribute")["group"]
    assert groups["attr0"] == groups["attr1"] == groups["attr2"] != groups["attr3"] == groups["attr4"] == groups["attr5"]
    model = create_method("anet", TASK, input_size=32, anet=TINY_ANET)
    with torch.no_grad():
        model.attribute_head.weight.copy_(torch.as_tensor(np.pad(weight, ((0, 0), (0, 8))), dtype=torch.float32))
    ckpt = _save(model, tmp_path / "run" / "checkpoints" / "best.ckpt") if (tmp_path / "run" / "checkpoints").mkdir(parents=True) is None else ""
    assert run_analysis("anet-attribute-groups", [ckpt, "--groups", "2"]) == 0
    table = pd.read_csv(tmp_path / "run" / "analysis" / "anet_attribute_groups.csv")
    assert list(table.columns) == ["attribute", "group", "distance_to_centre"] and len(table) == 6
    assert (tmp_path / "run" / "analysis" / "anet_attribute_groups.png").stat().st_size > 1000


@pytest.mark.slow
def test_cascade_end_to_end_through_the_runner(tmp_path: Path) -> None:
    """All five stages chained with init_from on tiny wild SynthFaces: records, boxes, the table."""
    from facebench.benchmarks.runner import run_suite
    from synth import synth_celeba_at

    root = synth_celeba_at(tmp_path / "synth", split_fractions=(0.5, 0.25, 0.25), n_identities=8, images_per_identity=5,
                           image_size=32, wild=True, wild_size=96)
    suite = tmp_path / "suite.yaml"
    lnet = {k: v for k, v in TINY_LNET.items()}
    lnet_plus = {**lnet, "batch_norm": True, "padding_mode": "reflect", "pooling": "global_max", "face_logit": True}
    suite.write_text(f"""
name: tiny_lnets
results_dir: {tmp_path / 'results'}
trainer: {{max_epochs: 1, log_every_n_steps: 1, enable_progress_bar: false}}
datasets:
  wild: {{datamodule: celeba, args: {{root: {root}, in_the_wild: true, batch_size: 8, num_workers: 0,
          attributes: [Male, Smiling, Eyeglasses]}}}}
methods:
  lnet_plus: {{method: lnet_plus, datamodule_args: {{in_the_wild: false}}, args: {{input_size: 48, scale_range: [1.0, 1.5],
              activation_l1: 0.3, clutter_negatives: 0.5, clutter_bank: 8, lnet: {lnet_plus}}}}}
  lnet_o: {{method: lnet_o, init_from: lnet_plus, args: {{input_size: 96, activation_l1: 0.3, clutter_negatives: 0.5,
            clutter_bank: 8, localization: {{box: moments}}}}}}
  lnet_s: {{method: lnet_s, init_from: lnet_o, args: {{input_size: 96, calibrate_face_scale: true, clutter_negatives: 0.5,
            clutter_bank: 8}}}}
  anet_identity: {{method: anet_identity, init_from: lnet_s, args: {{input_size: 96, anet: {TINY_ANET},
                   classifier_identity_fraction: 0.25}}}}
  anet: {{method: anet, init_from: anet_identity, args: {{input_size: 96}}}}
  lnets_anet: {{method: lnets_anet, init_from: anet, args: {{input_size: 96, view_margin: 8}}}}
""")
    outcomes = run_suite(str(suite), in_process=True, report=False)
    assert [o.state for o in outcomes] == ["done"] * 6, [o.message for o in outcomes]
    runs = tmp_path / "results" / "runs"
    metrics = pd.read_csv(runs / "lnets_anet--wild--s0" / "metrics.csv", keep_default_na=False)
    test = metrics[metrics["split"] == "test"]
    assert set(test[test["metric"] == "accuracy"]["target"]) == {"Male", "Smiling", "Eyeglasses"}
    assert "recall@iou0.5" in set(test["metric"]) and "mean_face_coverage" in set(test["metric"])
    lnet_s = pd.read_csv(runs / "lnet_s--wild--s0" / "metrics.csv", keep_default_na=False)
    assert "face_scale" in set(lnet_s["metric"])
    ident = pd.read_csv(runs / "anet_identity--wild--s0" / "metrics.csv", keep_default_na=False)
    assert set(ident["metric"]) == {"nn_accuracy", "verification_auroc"}
    with np.load(runs / "lnets_anet--wild--s0" / "predictions_test.npz") as z:
        assert {"probs", "face_box", "true_box", "head_box"} <= set(z.files)
    status = json.loads((runs / "lnets_anet--wild--s0" / "status.json").read_text())
    ckpt = torch.load(status["best_checkpoint"], map_location="cpu", weights_only=False)   # no gradient step: last.ckpt
    assert bool(ckpt["state_dict"]["classifier_fitted"])
    assert run_analysis("lnet-localization", [str(runs / "lnets_anet--wild--s0")]) == 0


@pytest.mark.realdata
@pytest.mark.skipif(not (DATA / "celeba_subset").is_dir(), reason="needs ../shared/data/celeba_subset (real CelebA)")
def test_real_celeba_identity_partition_and_step() -> None:
    from facebench.datamodules.base import create_datamodule

    dm = create_datamodule("celeba", root=str(DATA / "celeba_subset"), batch_size=16, num_workers=0, image_size=32)
    cls = type(create_method("anet_identity", dm.task, anet=TINY_ANET, train_identities=[1, 2]))
    kwargs = cls.datamodule_kwargs(dm, {})
    model = create_method("anet_identity", dm.task, anet=TINY_ANET, input_size=32, **kwargs)
    train_ids = set(dm.identity_classes("train"))
    assert set(model.anet_ids) | set(model.classifier_ids) == train_ids
    assert len(model.classifier_ids) == round(len(train_ids) / 9)
    assert not train_ids & set(dm.identity_classes("test"))   # CelebA's split is identity-disjoint
    batch = next(iter(dm.train_dataloader()))
    model.log_dict = lambda *a, **k: None
    loss = model.training_step(batch, 0)
    assert loss is None or torch.isfinite(loss)

"""The closed-form base (lightning_modules/closed_form.py): when the fit runs inside Lightning's loop,
on which batches, and that the fitted buffers reach validation and checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from facebench.core.tasks import Target, TaskSpec
from facebench.lightning_modules.closed_form import ClosedFormTask

TASK = TaskSpec((Target("a"), Target("b")), name="toy")


class ColumnMeans(ClosedFormTask):
    """Predicts each column's mean training label; records every fit and what validation saw."""

    def configure_models(self) -> None:
        self.register_buffer("means", torch.full((2,), 0.5))
        self.fits: list[tuple[int, bool]] = []        # (parts seen, fitted while validating)
        self.val_saw: list[list[float]] = []

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.logit(self.means.clamp(1e-4, 1 - 1e-4)).expand(image.shape[0], -1)

    def collect(self, batch: dict[str, Any]) -> torch.Tensor | None:
        return None if batch["label"][0, 0] < 0 else batch["label"].float()

    def fit(self, parts: list[torch.Tensor]) -> None:
        self.fits.append((len(parts), self.trainer.validating or self.trainer.sanity_checking))
        self.means.copy_(torch.cat(parts).mean(0))

    def on_validation_epoch_end(self) -> None:
        self.val_saw.append(self.means.tolist())
        super().on_validation_epoch_end()


def _batches(values: list[float]) -> list[dict[str, torch.Tensor]]:
    """One 4-sample batch per value: every label of the batch is that value (-1: a skipped batch)."""
    return [{"image": torch.zeros(4, 3, 8, 8), "label": torch.full((4, 2), int(v)), "index": torch.arange(4)} for v in values]


def _fit(model: ColumnMeans, train: list, val: list | None, epochs: int = 1, **trainer_args: Any) -> L.Trainer:
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **trainer_args)
    loader = torch.utils.data.DataLoader(train, batch_size=None)
    trainer.fit(model, train_dataloaders=loader,
                val_dataloaders=torch.utils.data.DataLoader(val, batch_size=None) if val else None)
    return trainer


def test_base_switches_off_gradient_training() -> None:
    model = ColumnMeans(TASK)
    assert not model.automatic_optimization and not ColumnMeans.gradient_trained
    assert model.configure_optimizers() is None and model.scheduler_cfg is None


def test_fit_before_validation_once_per_epoch_on_that_epoch_only() -> None:
    model = ColumnMeans(TASK)
    _fit(model, _batches([1, 0, 1, -1]), _batches([0]), epochs=2, num_sanity_val_steps=1)
    # the sanity check finds nothing to fit; each epoch fits once, when its validation starts, on its
    # three collected batches (the -1 batch is skipped by collect), not again at the epoch's end
    assert model.fits == [(3, True), (3, True)]
    assert model.val_saw == [[0.5, 0.5], [pytest.approx(2 / 3)] * 2, [pytest.approx(2 / 3)] * 2]
    assert model._train_parts == []


def test_fit_at_epoch_end_without_validation() -> None:
    model = ColumnMeans(TASK)
    _fit(model, _batches([1, 1, 0, 1]), None, limit_val_batches=0)
    assert model.fits == [(4, False)] and model.means.tolist() == [0.75, 0.75]


def test_mid_epoch_validation_refits_on_all_batches_of_the_epoch() -> None:
    model = ColumnMeans(TASK)
    _fit(model, _batches([1, 1, 0, 0]), _batches([0]), val_check_interval=2, num_sanity_val_steps=0)
    assert model.fits == [(2, True), (4, True)]
    assert model.val_saw == [[1.0, 1.0], [0.5, 0.5]]


def test_fitted_buffers_are_in_the_checkpoint(tmp_path: Path) -> None:
    model = ColumnMeans(TASK)
    trainer = _fit(model, _batches([1, 0, 0, 0]), None, limit_val_batches=0)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    reloaded = ColumnMeans.load_from_checkpoint(tmp_path / "m.ckpt", map_location="cpu")
    assert reloaded.means.tolist() == [0.25, 0.25]
    batch = _batches([0])[0]
    assert torch.equal(reloaded.probabilities(batch), model.probabilities(batch))

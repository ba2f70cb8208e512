"""The base of the methods fitted in closed form from one pass over the training split, with nothing
optimised by gradient: the majority baseline (label counts), the dlib embedding probe (logistic
regressions) and the LNets+ANet linear classifiers (SVMs on ANet features)."""

from __future__ import annotations

from typing import Any, ClassVar

from facebench.lightning_modules.base import FaceAttributeTask


class ClosedFormTask(FaceAttributeTask):
    """A method fitted in closed form at the end of a training epoch, inside Lightning's ordinary
    fit loop (one device, no optimiser, no scheduler, manual optimisation with nothing to step).

    A subclass implements two hooks (and its ``forward`` / ``probabilities``):

    * :meth:`collect` ``(batch) -> part``: what the fit needs of one training batch (features,
      labels, counts; ``None`` skips the batch). ``training_step`` calls it.
    * :meth:`fit` ``(parts)``: fits the predictor on the parts of the epoch, in batch order, and
      writes it into buffers registered in ``configure_models``, so that every checkpoint (and
      ``load_from_checkpoint``) holds the fitted predictor.

    When the fit runs: when validation starts (Lightning validates inside the training epoch, before
    ``on_train_epoch_end``, and validation must score the fitted predictor) and at the end of the
    training epoch, each time only if batches were collected since the last fit; so once per epoch
    with validation at the epoch's end or none. A mid-epoch validation fits on the batches of the
    epoch so far, and the epoch's end refits on all of them. The parts are dropped when the epoch
    ends: each epoch's fit sees that epoch's batches only. Under DDP every rank fits at the same
    moments (the ranks see equally many batches), so :meth:`fit` may reduce across ranks.
    """

    gradient_trained: ClassVar[bool] = False
    default_scheduler: ClassVar[dict | None] = None

    def __init__(self, task: Any, **kwargs: Any):
        super().__init__(task, **kwargs)
        self.automatic_optimization = False
        self._train_parts: list[Any] = []
        self._fitted_parts = 0   # how many of ``_train_parts`` the current fit has seen

    # -- the two hooks ------------------------------------------------------------------------------
    def collect(self, batch: dict[str, Any]) -> Any | None:
        """What :meth:`fit` needs of one training batch; ``None`` to skip it."""
        raise NotImplementedError

    def fit(self, parts: list[Any]) -> None:
        """Fit the predictor's buffers on the epoch's collected ``parts`` (never empty)."""
        raise NotImplementedError

    # -- loop mechanics -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        part = self.collect(batch)
        if part is not None:
            self._train_parts.append(part)
        return None

    def fit_collected(self) -> None:
        """Fit on the parts collected this epoch, unless none arrived since the last fit."""
        if len(self._train_parts) > self._fitted_parts:
            self.fit(self._train_parts)
            self._fitted_parts = len(self._train_parts)

    def _drop_parts(self) -> None:
        self._train_parts, self._fitted_parts = [], 0

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._drop_parts()

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self.fit_collected()

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.fit_collected()
        self._drop_parts()

    def configure_optimizers(self) -> None:
        return None

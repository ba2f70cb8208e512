"""The base LightningModule every method builds on.

A method subclasses :class:`FaceAttributeTask` and fills three hooks (torchgeo style):
``configure_models`` (layers), ``configure_losses`` (default: the task's sigmoid / softmax
cross-entropy per target, :func:`~facebench.lightning_modules.losses.target_losses`) and, rarely,
``configure_metrics``. Per-target losses are combined by ``combine_losses`` (equal weights; a sum
for methods made of independent networks, which also select each network's own best epoch:
:mod:`facebench.lightning_modules.selection`), or, when a suite sets ``mtl``, by a multi-task weighting
(:mod:`facebench.lightning_modules.weighting`; gradient methods read the ``shared_parameters`` hook, and
the ``shared_representation`` hook for ``mtl: {gradients: representation}``).
Training, validation, the gathering of test predictions under DDP, optimisers and schedulers from
config, parameter and FLOP counts are here.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn

from facebench.core.config import check_options, constructor_options
from facebench.core.tasks import TaskSpec
from facebench.lightning_modules.losses import TargetLossMean, target_losses
from facebench.lightning_modules.metrics import COLUMNS, TaskMetrics, summarize
from facebench.lightning_modules.selection import NetworkSelection
from facebench.lightning_modules.weighting.base import StepContext
from facebench.lightning_modules.weighting.objective import MultiTaskObjective, build_multitask, default_task_groups


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the run stops, the suite goes on."""


def _gather(t: torch.Tensor) -> torch.Tensor:
    """All-gather a tensor with per-rank first dimensions of any size (no-op outside DDP)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        from torchmetrics.utilities.distributed import gather_all_tensors

        return torch.cat(gather_all_tensors(t.contiguous()))
    return t


def _channels_last_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: 4-D tensor arguments in ``channels_last`` memory format."""
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4 else a
                 for a in args)


class FaceAttributeTask(L.LightningModule):
    """Base of all methods.

    Args:
        task: the dataset's :class:`TaskSpec` (or its dict form, as stored in checkpoints).
        optimizer: ``{"name": <torch.optim class>, **kwargs}``; default per method (``default_optimizer``).
        scheduler: ``{"name": <torch.optim.lr_scheduler class>, "interval": "epoch"|"step", **kwargs}``;
            the string values ``"max_epochs"`` and ``"total_steps"`` are replaced by the trainer's;
            ``monitor`` (default: the method's ``monitor``) feeds ``ReduceLROnPlateau``; ``None``
            keeps ``default_scheduler``, an unknown optimizer or scheduler name is a ``ValueError``.
        input_size, in_chans: network input (default: the method's ``input_size`` / ``input_channels``).
        init_checkpoint: weights of an earlier stage (a Lightning ``.ckpt`` or a state dict file).
        soft_targets: train multi-class targets on rater-vote distributions when the batch has them.
        channels_last: keep 4-D weights and inputs in ``torch.channels_last`` memory format (faster
            convolutions on tensor-core GPUs); ``None`` (default): on when training on CUDA.
        torch_compile: compile ``forward`` with ``torch.compile`` at setup (``true`` or a mapping of
            its keyword arguments, e.g. ``{mode: max-autotune}``); off by default (each run then
            spends a minute compiling, which pays off on GPU runs of more than a few epochs).
        mtl: multi-task weighting of the training loss, ``{weighting: NAME, tasks: targets | groups |
            {task: [target, ...]}, gradients: parameters | representation, jacobian: auto | batched |
            loop, **options}`` (:mod:`facebench.lightning_modules.weighting.objective`; ``facebench list
            weightings``); ``None`` (default): the mean of the target losses, nothing else is built or
            logged. Validation always reports the unweighted ``val/loss``.
    """

    method_name: ClassVar[str] = ""
    #: The paper the method comes from, as ``facebench list methods`` shows it ("none: ..." for baselines).
    paper: ClassVar[str] = ""
    task_kinds: ClassVar[frozenset[str]] = frozenset({"binary"})
    input_size: ClassVar[int] = 64
    input_channels: ClassVar[int] = 3
    needs_landmarks: ClassVar[bool] = False
    #: The paper's training augmentation (TransformConfig fields), applied unless the suite sets them.
    default_train_transforms: ClassVar[dict[str, Any]] = {}
    #: False for methods with nothing to optimise by gradient (they run on one device, no DDP).
    gradient_trained: ClassVar[bool] = True
    default_optimizer: ClassVar[dict] = {"name": "AdamW", "lr": 1e-3, "weight_decay": 1e-4}
    default_scheduler: ClassVar[dict | None] = {"name": "CosineAnnealingLR", "T_max": "max_epochs", "interval": "epoch"}
    monitor: ClassVar[tuple[str, str]] = ("val/loss", "min")

    def __init__(self, task: TaskSpec | dict, *, optimizer: dict | None = None, scheduler: dict | None = None,
                 input_size: int | None = None, in_chans: int | None = None, init_checkpoint: str | None = None,
                 soft_targets: bool = False, channels_last: bool | None = None, torch_compile: bool | dict = False,
                 mtl: dict | None = None):
        super().__init__()
        self.task = TaskSpec.from_dict(task) if isinstance(task, dict) else task
        self.save_hyperparameters(ignore=["task"])   # every constructor argument of the whole class chain
        self.hparams["task"] = self.task.to_dict()
        self.image_size = input_size or self.input_size
        self.in_chans = in_chans or self.input_channels
        self.optimizer_cfg = dict(optimizer or self.default_optimizer)
        self.scheduler_cfg = dict(scheduler) if scheduler is not None else (dict(self.default_scheduler) if self.default_scheduler else None)
        self.use_soft_targets = soft_targets
        if not isinstance(torch_compile, (bool, dict)):
            raise ValueError(f"torch_compile must be true, false or a mapping of torch.compile arguments, got {torch_compile!r}")
        self.channels_last_arg, self.torch_compile_cfg = channels_last, torch_compile
        self._performance_applied = False
        self.eval_split_names: list[str] = ["test"]
        self.collected: dict[str, dict[str, np.ndarray]] = {}
        self._buffers_out: dict[int, dict[str, list[torch.Tensor]]] = {}
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()
        networks = self.independent_networks()
        self.network_selection = NetworkSelection(len(networks), self.monitor[1]) if networks else None
        if networks and self.monitor[0] == "val/loss":
            self.val_target_loss = TargetLossMean(len(self.task.targets))
        self.multitask: MultiTaskObjective | None = None if mtl is None else self.build_multitask(mtl)
        if init_checkpoint:
            self.load_init_checkpoint(init_checkpoint)

    @classmethod
    def config_keys(cls) -> set[str]:
        """Keyword arguments of the constructors from this class up to :class:`FaceAttributeTask`."""
        return constructor_options(cls, FaceAttributeTask, skip=("self", "task"))

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        """``ValueError`` naming the keys of ``cfg`` that are not :meth:`config_keys`, and the allowed ones."""
        check_options(f"method {cls.method_name!r}", cfg, cls.config_keys())

    @classmethod
    def reference_config(cls) -> dict[str, Any]:
        """Constructor arguments for ``facebench list methods`` (e.g. a number of identities)."""
        return {}

    @classmethod
    def datamodule_kwargs(cls, dm: Any, args: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments derived from the datamodule (e.g. the number of training identities)."""
        return {}

    # -- hooks ---------------------------------------------------------------------------------------
    def configure_models(self) -> None:
        """Build the networks (called by ``__init__`` before the losses and metrics; required)."""
        raise NotImplementedError

    def configure_losses(self) -> None:
        """``self.criterion(logits, labels, soft_targets=...) -> [T]`` per-target losses."""
        self.criterion = functools.partial(target_losses, self.task)

    def configure_metrics(self) -> None:
        self.val_metrics = TaskMetrics(self.task, auroc=True)

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """Logits ``[B, task.n_logits]`` for a batch; override when a method needs more than the image."""
        return self(batch["image"])

    def probabilities(self, batch: dict[str, Any], logits: torch.Tensor | None = None) -> torch.Tensor:
        """Probabilities ``[B, task.n_logits]`` in the task's layout (what records and metrics see)."""
        return self.task.probabilities(self.logits(batch) if logits is None else logits)

    def target_losses(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The loss of each target on a batch, ``[T]`` in task order."""
        soft = batch.get("soft_label") if self.use_soft_targets else None
        return self.criterion(logits, batch["label"], soft_targets=soft)

    def combine_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """One training loss from the per-target losses: their mean (equal weights), or their sum
        for methods made of independent networks (:attr:`sums_target_losses`)."""
        return losses.sum() if self.sums_target_losses else losses.mean()

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return self.combine_losses(self.target_losses(logits, batch))

    def independent_networks(self) -> list[tuple[nn.Module, list[int]]]:
        """Separately trained networks held in this module and the target indices each predicts
        (e.g. one network per target); empty for one network (the default). Each such network is
        selected on its own validation score (:mod:`facebench.lightning_modules.selection`)."""
        return []

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters every task shares (e.g. MCNN's Conv1/Conv2, a backbone's trunk), which
        multi-task gradient methods combine the per-task gradients on; default none (gradient
        methods then refuse the method, naming it)."""
        return []

    def shared_representation(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """``(h, heads)``: the output ``h`` of the layers all tasks share (the layers of
        :meth:`shared_parameters`) on a batch, and the function of the task-specific layers from it
        to the logits (``heads(h)`` equals :meth:`logits`), for ``mtl: {gradients: representation}``
        (MGDA-UB, Sener & Koltun 2018, sec. 3.3). Default: none (that setting then refuses the method)."""
        raise NotImplementedError(f"method {self.method_name!r} gives no shared representation")

    @property
    def has_shared_representation(self) -> bool:
        return type(self).shared_representation is not FaceAttributeTask.shared_representation

    def task_groups(self) -> dict[str, list[str]]:
        """``{group: [target names]}`` for ``mtl: {tasks: groups}``; default each ``Target.group``."""
        return default_task_groups(self.task)

    def build_multitask(self, mtl: dict) -> MultiTaskObjective:
        """The ``mtl`` objective; only for methods whose training loss is the base's combination of
        per-target losses, with parameters shared between targets."""
        own = [n for n in ("compute_loss", "combine_losses", "training_loss", "training_step")
               if getattr(type(self), n) is not getattr(FaceAttributeTask, n)]
        if own:
            raise ValueError(f"method {self.method_name!r} computes its own training loss ({', '.join(own)}): "
                             f"mtl weightings apply to the base task's per-target losses only")
        if self.sums_target_losses:
            raise ValueError(f"method {self.method_name!r} trains independent networks (nothing is shared between "
                             f"targets): mtl weightings do not apply")
        return build_multitask(mtl, self.task, self.method_name, self.task_groups, self.shared_parameters,
                               has_representation=self.has_shared_representation)

    @property
    def sums_target_losses(self) -> bool:
        """True when the targets are learnt by separate networks (or separate paths of one module):
        the training loss is then the sum of the per-target losses, so that every network gets the
        gradient it would get trained alone (a mean would divide each one's learning rate by T)."""
        return self.network_selection is not None

    @property
    def evaluation_checkpoint(self) -> str:
        """Checkpoint to evaluate: ``"best"`` (the monitored epoch) or ``"last"``, which methods with
        per-network selection need (it holds every network's best weights)."""
        return "last" if self.network_selection is not None else "best"

    def frozen_modules(self) -> list[nn.Module]:
        """Modules taken fixed from an earlier stage (MCNN under AUX, a branch's trunk): kept in eval
        mode (batch-norm statistics and dropout of the earlier stage) whenever the module trains."""
        return []

    def train(self, mode: bool = True) -> "FaceAttributeTask":
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

    def load_init_checkpoint(self, path: str) -> None:
        """Initialise from an earlier stage (a Lightning checkpoint or a state dict file); default:
        load every state-dict entry (parameters and buffers) whose name and shape match, a
        ``ValueError`` when none does."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
        own = self.state_dict()
        matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not matched:
            raise ValueError(f"{path}: no parameter matches {type(self).__name__} (is it a checkpoint of an earlier stage?)")
        self.load_state_dict(matched, strict=False)

    def evaluate_predictions(self, split: str, arrays: dict[str, np.ndarray]) -> "Any | None":
        """Metrics rows for methods whose outputs are not in the task layout (e.g. regression):
        return a DataFrame with columns target, class, metric, value; ``None`` uses the standard
        task metrics on ``arrays["probs"]`` / ``arrays["labels"]``."""
        return None

    # -- steps ---------------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise on a training batch, and its named parts to log as ``train/<name>``
        (epoch means); methods with several loss terms override this, not :meth:`training_step`.
        With ``mtl`` the multi-task objective weighs the per-target losses (its parts:
        ``mtl_mean_loss``, the unweighted mean, and ``mtl_weight/<task>``)."""
        if self.multitask is None:
            return self.compute_loss(self.logits(batch), batch), {}
        representation = None
        if self.multitask.uses_representation:    # gradients on the trunk's output: MGDA-UB
            representation, heads = self.shared_representation(batch)
            logits = heads(representation)
        else:
            logits = self.logits(batch)
        ctx = StepContext(epoch=self.current_epoch, shared=self.shared_parameters, representation=representation)
        return self.multitask(self.target_losses(logits, batch), ctx)

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        """FAMO-style weightings see the batch's task losses after the optimiser step."""
        if self.multitask is not None and self.multitask.wants_losses_after_step:
            self.multitask.after_step(self, batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, parts = self.training_loss(batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"{self.method_name}: training loss is {loss.item()} at epoch {self.current_epoch}, "
                                     f"step {self.global_step}; lower the learning rate or check the inputs")
        n = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        if parts:
            self.log_dict({f"train/{k}": v.detach() for k, v in parts.items()}, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.logits(batch)
        loss = self.compute_loss(logits, batch)
        n = batch["image"].shape[0]
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=n)
        self.val_metrics.update(self.probabilities(batch, logits), batch["label"])
        if hasattr(self, "val_target_loss"):
            self.val_target_loss.update(self.target_losses(logits, batch), n)

    def on_validation_epoch_end(self) -> None:
        rows = pd.DataFrame(self.val_metrics.compute(), columns=COLUMNS)
        for name, value in summarize(rows, self.task).items():
            self.log(f"val/{name}", value, sync_dist=False)
        self.val_metrics.reset()
        if self.network_selection is not None:
            self.select_networks(rows)

    def target_scores(self, rows: pd.DataFrame) -> np.ndarray:
        """Per-target validation score ``[T]`` of the monitored quantity: the per-target loss for
        ``val/loss``, else the target's mean of the monitored metric (``val/mean_accuracy`` ->
        its accuracy rows)."""
        if self.monitor[0] == "val/loss":
            scores = self.val_target_loss.compute().cpu().numpy()
            self.val_target_loss.reset()
            return scores
        metric = self.monitor[0].removeprefix("val/").removeprefix("mean_")
        sel = rows[rows["metric"] == metric]
        level = sel[sel["class"].fillna("") == ""]
        per = level.groupby("target")["value"].mean()
        per = per.combine_first(sel.groupby("target")["value"].mean())   # multi-label targets: their classes
        return np.array([per.get(name, np.nan) for name in self.task.names], dtype=np.float64)

    def select_networks(self, rows: pd.DataFrame) -> None:
        """Keep each independent network's weights at its own best validation epoch."""
        scores = self.target_scores(rows)
        if not self.trainer.sanity_checking:
            self.select_networks_at(rows, self.current_epoch, scores)

    def select_networks_at(self, rows: pd.DataFrame, epoch: int, scores: np.ndarray | None = None) -> None:
        """:meth:`select_networks` for a given epoch (scores: :meth:`target_scores` of ``rows``)."""
        scores = self.target_scores(rows) if scores is None else scores
        networks = self.independent_networks()
        per_network = [float(np.nanmean(scores[idx])) if np.isfinite(scores[idx]).any() else np.nan for _, idx in networks]
        self.network_selection.update(per_network, [net for net, _ in networks], epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.network_selection is not None:
            checkpoint["network_selection"] = self.network_selection.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.network_selection is not None and "network_selection" in checkpoint:
            self.network_selection.load_state_dict(checkpoint["network_selection"])

    def apply_network_selection(self) -> None:
        """Load every independent network's best weights (before testing or predicting)."""
        if self.network_selection is not None:
            self.network_selection.apply([net for net, _ in self.independent_networks()])

    def on_test_start(self) -> None:
        self.apply_network_selection()

    def on_predict_start(self) -> None:
        self.apply_network_selection()

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        probs = self.probabilities(batch)
        buf = self._buffers_out.setdefault(dataloader_idx, {})
        parts = {"probs": probs, "labels": batch["label"], "index": batch["index"]}
        for name, v in (batch.get("votes") or {}).items():
            parts[f"votes/{name}"] = v
        for k, v in parts.items():
            buf.setdefault(k, []).append(v.detach())

    def on_test_epoch_start(self) -> None:
        self._buffers_out = {}
        self.collected = {}

    def on_test_epoch_end(self) -> None:
        """Gather every rank's predictions, drop the duplicates DDP's sampler pads with, sort by index."""
        for idx, buf in self._buffers_out.items():
            split = self.eval_split_names[idx] if idx < len(self.eval_split_names) else f"split{idx}"
            gathered = {k: _gather(torch.cat(v)).cpu() for k, v in buf.items()}
            index = gathered["index"].numpy()
            _, first = np.unique(index, return_index=True)
            self.collected[split] = {k: v.numpy()[first] for k, v in gathered.items()}
        self._buffers_out = {}

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self.probabilities(batch)

    # -- optimisation --------------------------------------------------------------------------------
    def _resolve(self, value: Any) -> Any:
        if value == "max_epochs":
            return max(int(self.trainer.max_epochs or 1), 1)
        if value == "total_steps":
            return max(int(self.trainer.estimated_stepping_batches), 1)
        return value

    def optimizer_parameters(self) -> Any:
        """Parameters to optimise (default: all that require grad)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        cfg = dict(self.optimizer_cfg)
        name = cfg.pop("name")
        if not hasattr(torch.optim, name):
            raise ValueError(f"optimizer name {name!r} is not a torch.optim class")
        opt = getattr(torch.optim, name)(self.optimizer_parameters(), **cfg)
        if not self.scheduler_cfg:
            return opt
        scfg = {k: self._resolve(v) for k, v in self.scheduler_cfg.items()}
        sname, interval = scfg.pop("name"), scfg.pop("interval", "epoch")
        monitor = scfg.pop("monitor", self.monitor[0])
        if not hasattr(torch.optim.lr_scheduler, sname):
            raise ValueError(f"scheduler name {sname!r} is not a torch.optim.lr_scheduler class")
        sched = getattr(torch.optim.lr_scheduler, sname)(opt, **scfg)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval, "monitor": monitor}}

    # -- performance (GPU path) -----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Lightning hook, before optimisers are built: apply ``channels_last`` / ``torch_compile``."""
        if self._performance_applied:
            return
        self._performance_applied = True
        trainer = self._trainer
        on_cuda = trainer is not None and trainer.strategy.root_device.type == "cuda"
        if self.channels_last_arg or (self.channels_last_arg is None and on_cuda):
            self.to(memory_format=torch.channels_last)
            self.register_forward_pre_hook(_channels_last_inputs)
        if self.torch_compile_cfg:
            options = self.torch_compile_cfg if isinstance(self.torch_compile_cfg, dict) else {}
            self.forward = torch.compile(self.forward, **options)   # type: ignore[method-assign]

    # -- efficiency ----------------------------------------------------------------------------------
    def parameter_count(self, trainable_only: bool = False) -> int:
        """Number of parameters (``trainable_only``: those that require a gradient)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def example_batch(self, batch_size: int = 1) -> dict[str, Any]:
        """A random batch of the method's input shape (used for FLOP counting and shape tests)."""
        s = self.image_size
        batch: dict[str, Any] = {"image": torch.randn(batch_size, self.in_chans, s, s, device=self.device),
                                 "label": torch.zeros(batch_size, self.task.n_label_slots, dtype=torch.long, device=self.device)}
        if self.needs_landmarks:
            batch["landmarks"] = torch.rand(batch_size, 68, 2, device=self.device) * s
        return batch

    @torch.no_grad()
    def flops_per_image(self) -> int:
        """Forward FLOPs for one image as counted by ``torch.utils.flop_counter`` (2 per multiply-add)."""
        from torch.utils.flop_counter import FlopCounterMode

        was_training = self.training
        self.eval()
        compiled = self.__dict__.pop("forward", None)   # count the eager graph, not torch.compile's
        counter = FlopCounterMode(display=False)
        try:
            with counter:
                self.logits(self.example_batch(1))
        finally:
            if compiled is not None:
                self.forward = compiled   # type: ignore[method-assign]
            self.train(was_training)
        return int(counter.get_total_flops())

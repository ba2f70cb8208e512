"""LACNN, the Landmark Augmented Convolutional Neural Network of the Face Attributes Dataset (FAD)
paper (``papers/lacnn_landmark_augmented_cnn_FAD.txt``), and its AlexNet baseline.

What the paper does, and where it is here:

* **Network** (s3, Figure 1): AlexNet [Krizhevsky et al. 2012] as the paper ran it in Caffe, see
  :class:`CaffeAlexNet`: five convolutions (the first two followed by ReLU, local response
  normalisation and 3x3/2 max-pooling, the fifth by max-pooling), FC 4096 -> 4096 with dropout 0.5,
  then the output layer L8.
* **Baseline** (s3 "Choice of the loss function"): one network per trait, each trained with the
  softmax loss (eq. 1-2) over the trait's classes (``joint: false``, the default and the paper's
  choice), or as an option one joint network for all traits with the sigmoid cross-entropy loss
  (eq. 3, ``joint: true``). Registered as ``lacnn_baseline`` (RGB input).
* **LACNN** (s3.1, Figure 3 AUGMENT-FLL): a 4th input channel ``A(x, y)`` holding, for every pixel,
  the index of the nearest of the image's ``k`` facial landmarks (:func:`nearest_landmark_index`).
  It is computed inside the module from ``batch["landmarks"]``, i.e. from landmarks that went
  through the same affine warp as the pixels (rotation, flip, crop: ``datamodules/transforms.py``),
  so it is aligned with the image the network sees. Registered as ``lacnn`` (RGB + landmark channel).
  The paper uses TCDCN's 68 points; here any ``k`` works: 5 for CelebA's and SynthFaces' files,
  68 where a dataset provides iBUG-300W / dlib points.
* **Rotation augmentation** (s3 "Rotating images in the training set", Figure 2): every training
  image is also seen rotated by {-40, -20, 20, 40} degrees, making the training set 5x larger. Here
  the method asks the datamodule for ``rotation_choices: [0, -40, -20, 20, 40]``: every epoch, every
  training image is drawn at one of the five angles, uniformly and independently (seeded by
  (seed, epoch, index)). Over ``5 E`` epochs each image is seen at each angle ``E`` times in
  expectation, so ``5 E`` epochs of this equal ``E`` epochs over the paper's 5x expanded set in
  expectation (the same number of gradient steps). Set ``max_epochs`` accordingly;
  ``rotation_angles: []`` turns the augmentation off. No other augmentation is applied (the paper
  names none).
* **Split** (s4): the paper's 80/20 train/test split stratified on every trait applies to datasets
  without an official split; it comes from the shared ``datamodules/splits.py``, not from here.
* **Figure 5** (first-layer responses): ``facebench analyze lacnn-first-layer``;
  ``facebench analyze lacnn-compare`` prints, per trait, the baseline's and LACNN's accuracy and
  which won (Table 3). Both are in :mod:`facebench.benchmarks.analyses.lacnn`; the networks expose what
  they read (:meth:`CaffeAlexNet.conv1_responses`, :meth:`LACNNBaseline.network_for`).

Choices the paper leaves open (it defers to Krizhevsky et al. 2012 and Caffe) are documented where
they are made: Caffe's ``bvlc_alexnet`` layer parameters and its solver's SGD settings (learning
rate 0.01, momentum 0.9, weight decay 5e-4 on weights = the ``L_R`` term of eq. 1). The schedule is
*not* Caffe's: ``bvlc_alexnet``'s solver divides the learning rate by 10 on a fixed step (every
100,000 iterations of 256 images, about 20 epochs of ImageNet), which has no meaning at this data
size. We use Krizhevsky et al.'s own rule (2012, s5: the learning rate was divided by 10 "when the
validation error rate stopped improving with the current learning rate"), automated as
``ReduceLROnPlateau`` on ``val/loss`` (factor 0.1, patience 3 epochs). Initialisation: the paper does not give one; the default is He-normal (the
standard for ReLU networks trained from scratch), because Caffe's Gaussian fillers (std 0.01 /
0.005) were calibrated for 227 px inputs of 0-255 pixel values and leave the FC layers almost
input-independent at CPU-sized inputs (fc6 sees 256 features at 64 px instead of 9,216): measured
on SynthFaces (64 px, 1,600 training images, 3 epochs, 2 traits) the Caffe init stayed at chance
(val balanced accuracy 0.50) where He init reached 0.65. ``weight_init: caffe`` with
``input_scale: 127.5`` reproduces Caffe's.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from facebench.core.tasks import Target, TaskSpec
from facebench.lightning_modules.base import FaceAttributeTask
from facebench.lightning_modules.registry import register_method

#: Caffe ``bvlc_alexnet`` local response normalisation (across 5 channels; Caffe's k = 1).
CAFFE_LRN: dict[str, float] = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}
#: The paper's training rotations in degrees (s3, Figure 2); 0 (the original image) is added.
PAPER_ROTATIONS: tuple[float, ...] = (-40.0, -20.0, 20.0, 40.0)
LANDMARK_ENCODINGS: tuple[str, ...] = ("unit", "index")
WEIGHT_INITS: tuple[str, ...] = ("caffe", "kaiming")


# ------------------------------------------------------------------------------------------------
# AlexNet
# ------------------------------------------------------------------------------------------------
class CaffeAlexNet(nn.Module):
    """AlexNet as Caffe's ``bvlc_alexnet`` defines it (the FAD paper trains it in Caffe, s4).

    ``conv1`` 96x11x11 stride 4 -> ReLU -> LRN -> max-pool 3/2; ``conv2`` 256x5x5 pad 2 (``groups``)
    -> ReLU -> LRN -> max-pool 3/2; ``conv3`` 384x3x3 pad 1; ``conv4`` 384x3x3 pad 1 (``groups``);
    ``conv5`` 256x3x3 pad 1 (``groups``) -> max-pool 3/2; ``fc6`` -> ReLU -> dropout; ``fc7`` ->
    ReLU -> dropout; ``fc8`` (L8) with ``num_outputs`` units.

    Sized for any input: pooling rounds up as Caffe's does (``ceil_mode=True``) and ``fc6``'s input
    width is computed by running the convolutional part once on a zero image of ``input_size``, so
    the layers adapt (150 px, the paper's size: 256x4x4 = 4,096 inputs to fc6; 96 px: 256x2x2;
    64 px: 256x1x1); inputs too small for the five conv / pool stages (below 39 px) raise an error.

    ``conv_groups=2`` keeps Krizhevsky's two-GPU split of conv2/4/5 as in Caffe's definition
    (1 gives the single-tower variant). ``weight_init="caffe"`` is ``bvlc_alexnet``'s: Gaussian
    weights (std 0.01; 0.005 for fc6/fc7), biases 0.1 for conv2, conv4, conv5, fc6, fc7 and 0
    otherwise; ``"kaiming"`` (default) is He-normal weights with zero biases (fc8: std 0.01).
    """

    def __init__(self, in_chans: int, num_outputs: int, input_size: int, *, fc_width: int = 4096,
                 dropout: float = 0.5, conv_groups: int = 2, lrn: dict[str, float] | None = None,
                 weight_init: str = "kaiming"):
        super().__init__()
        lrn = {**CAFFE_LRN, **(lrn or {})}
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init {weight_init!r} is not one of {WEIGHT_INITS}")
        pool = dict(kernel_size=3, stride=2, ceil_mode=True)
        self.conv1 = nn.Conv2d(in_chans, 96, kernel_size=11, stride=4)
        self.features = nn.Sequential(
            self.conv1, nn.ReLU(inplace=True), nn.LocalResponseNorm(**lrn), nn.MaxPool2d(**pool),
            nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=conv_groups), nn.ReLU(inplace=True),
            nn.LocalResponseNorm(**lrn), nn.MaxPool2d(**pool),
            nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=conv_groups), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=conv_groups), nn.ReLU(inplace=True),
            nn.MaxPool2d(**pool),
        )
        self.flat_features = self.feature_size(in_chans, input_size)
        self.classifier = nn.Sequential(
            nn.Linear(self.flat_features, fc_width), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc_width, fc_width), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc_width, num_outputs),
        )
        self.reset_parameters(weight_init)

    @torch.no_grad()
    def feature_size(self, in_chans: int, input_size: int) -> int:
        """Width of the flattened conv5 output for a square ``input_size`` image."""
        try:
            out = self.features(torch.zeros(1, in_chans, input_size, input_size))
        except RuntimeError as exc:
            raise ValueError(f"AlexNet: a {input_size}x{input_size} input is too small for its conv / pool "
                             f"stages ({exc})") from None
        return int(out[0].numel())

    def reset_parameters(self, weight_init: str) -> None:
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        fcs = [m for m in self.classifier if isinstance(m, nn.Linear)]
        if weight_init == "kaiming":
            for m in convs + fcs:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
            nn.init.normal_(fcs[-1].weight, std=0.01)
            return
        # Caffe bvlc_alexnet train_val.prototxt fillers
        for i, m in enumerate(convs):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.constant_(m.bias, 0.1 if i in (1, 3, 4) else 0.0)
        for i, m in enumerate(fcs):
            nn.init.normal_(m.weight, std=0.005 if i < 2 else 0.01)
            nn.init.constant_(m.bias, 0.1 if i < 2 else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))

    def conv1_responses(self, x: torch.Tensor) -> torch.Tensor:
        """Rectified outputs of the first convolutional layer ``[B, 96, H', W']`` (Figure 5)."""
        return torch.relu(self.conv1(x))


# ------------------------------------------------------------------------------------------------
# AUGMENT-FLL (Figure 3)
# ------------------------------------------------------------------------------------------------
def nearest_landmark_index(landmarks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``A(x, y) = argmin_j ||c_j - (x, y)||_2`` for every pixel: ``LongTensor [B, H, W]`` of 0-based
    landmark indices, for landmarks ``[B, k, 2]`` in (x, y) pixel-index coordinates (the centre of the
    top-left pixel is (0, 0), cv2's convention, which the transforms use). Ties go to the lower index.

    Vectorised (batched ``cdist`` over the pixel grid, then ``argmin``); distances are computed
    directly, not through the matrix-product expansion, so equal distances stay exactly equal.
    """
    if landmarks.ndim != 3 or landmarks.shape[-1] != 2:
        raise ValueError(f"landmarks must be [B, k, 2], got {tuple(landmarks.shape)}")
    pts = landmarks.float()
    ys, xs = torch.meshgrid(torch.arange(height, device=pts.device, dtype=pts.dtype),
                            torch.arange(width, device=pts.device, dtype=pts.dtype), indexing="ij")
    grid = torch.stack([xs, ys], dim=-1).reshape(1, height * width, 2).expand(pts.shape[0], -1, -1)
    dist = torch.cdist(grid, pts, compute_mode="donot_use_mm_for_euclid_dist")   # [B, H*W, k]
    return dist.argmin(dim=-1).view(pts.shape[0], height, width)


def landmark_channel(landmarks: torch.Tensor, height: int, width: int, encoding: str = "unit") -> torch.Tensor:
    """The additional input channel ``A`` as ``[B, 1, H, W]`` floats.

    ``encoding="index"`` is the paper's literal value, the landmark's 1-based index (1..k, Figure 3);
    ``"unit"`` maps index ``j`` (0-based) to ``j / (k - 1)`` in [0, 1], the scale of the image pixels.
    A sample whose landmarks are unknown (any NaN, e.g. an image the landmark provider could not read;
    the datamodule gives such samples missing labels) gets an all-zero channel.
    """
    if encoding not in LANDMARK_ENCODINGS:
        raise ValueError(f"landmark encoding {encoding!r} is not one of {LANDMARK_ENCODINGS}")
    known = torch.isfinite(landmarks).flatten(1).all(dim=1)
    index = nearest_landmark_index(torch.where(known[:, None, None], landmarks, 0.0), height, width)
    k = landmarks.shape[1]
    channel = index.unsqueeze(1).float() + 1.0 if encoding == "index" else index.unsqueeze(1).float() / max(k - 1, 1)
    return channel * known[:, None, None, None]


# ------------------------------------------------------------------------------------------------
# methods
# ------------------------------------------------------------------------------------------------
@register_method("lacnn_baseline")
class LACNNBaseline(FaceAttributeTask):
    """The FAD paper's AlexNet baseline (s3): one AlexNet per trait with a softmax loss, or one joint
    AlexNet with the sigmoid cross-entropy loss (eq. 3).

    Per-trait mode (``joint: false``, the paper's choice): ``T`` independent :class:`CaffeAlexNet`
    in one module, one per target. A binary trait's network has 2 softmax outputs ``(l0, l1)``; in
    the task's logit layout it becomes ``l1 - l0``, so ``sigmoid(l1 - l0) = softmax(l0, l1)[1]`` and
    the task's sigmoid cross-entropy on it *is* the 2-way softmax loss of eqs. 1-2. A multi-class or
    ordinal trait's network has one output per class (softmax loss); a multi-label trait's has one
    sigmoid output per class (its classes are not exclusive, the case eq. 3 is for). The training
    loss is the *sum* of the per-trait losses, so every network gets exactly the gradient it would
    get trained alone (a mean would divide each network's learning rate by ``T``), and every
    network keeps the weights of its own best validation epoch (its own trait's ``val`` loss:
    :mod:`facebench.lightning_modules.selection`), as separately trained networks would.

    Joint mode (``joint: true``): one AlexNet whose L8 has ``task.n_logits`` outputs, trained with
    the task's loss (sigmoid cross-entropy over binary traits = eq. 3).

    Args:
        joint: one joint network (eq. 3) instead of one network per trait.
        fc_width, dropout, conv_groups, lrn, weight_init: :class:`CaffeAlexNet` options.
        input_scale: factor applied to the normalised input before conv1 (default 1). Caffe's AlexNet
            sees mean-subtracted 0-255 pixels and its Gaussian initialisation is scaled for them: with
            ``weight_init: caffe`` use 127.5, which maps the datamodule's default normalisation
            ``(x - 0.5) / 0.5`` back to that range.
        rotation_angles: training rotations in degrees besides 0 (s3, Figure 2); ``[]`` or ``null``
            turns them off. Sets the datamodule's ``rotation_choices`` unless the suite sets it.
        input_size: network input side (paper: 150; the layers adapt, see :class:`CaffeAlexNet`).

    Optimiser: SGD, learning rate 0.01, momentum 0.9, weight decay 5e-4 on weights only (Caffe's
    ``bvlc_alexnet`` solver and layer definitions: eq. 1's ``L_R = lambda ||W||^2``, ``decay_mult: 0``
    on biases). Schedule: Krizhevsky et al. 2012 s5's manual rule (divide by 10 when the validation
    error stops improving), automated as ``ReduceLROnPlateau`` on ``val/loss`` with ``patience`` 3
    epochs; Caffe's own solver uses a fixed step instead (see the module docstring).
    """

    paper = "the Face Attributes Dataset (FAD) paper (papers/lacnn_landmark_augmented_cnn_FAD.txt)"
    task_kinds = frozenset({"binary", "multiclass", "ordinal", "multilabel"})
    input_size = 150
    input_channels = 3
    uses_landmark_channel: ClassVar[bool] = False
    default_optimizer = {"name": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
    default_scheduler = {"name": "ReduceLROnPlateau", "mode": "min", "factor": 0.1, "patience": 3,
                         "interval": "epoch", "monitor": "val/loss"}

    def __init__(self, task: TaskSpec | dict, *, joint: bool = False, fc_width: int = 4096, dropout: float = 0.5,
                 conv_groups: int = 2, lrn: dict[str, float] | None = None, weight_init: str = "kaiming",
                 input_scale: float = 1.0, rotation_angles: Sequence[float] | None = PAPER_ROTATIONS,
                 **kwargs: Any):
        self.joint, self.fc_width, self.dropout, self.conv_groups = joint, fc_width, dropout, conv_groups
        self.lrn, self.weight_init, self.input_scale = dict(lrn or {}), weight_init, float(input_scale)
        angles = [float(a) for a in (rotation_angles or [])]
        # the paper's training augmentation (per instance: the angles are an option)
        self.default_train_transforms = {"rotation_choices": [0.0] + angles} if angles else {}
        super().__init__(task, **kwargs)

    # -- layers -----------------------------------------------------------------------------------
    @property
    def network_channels(self) -> int:
        return self.in_chans + int(self.uses_landmark_channel)

    def _alexnet(self, num_outputs: int) -> CaffeAlexNet:
        return CaffeAlexNet(self.network_channels, num_outputs, self.image_size, fc_width=self.fc_width,
                            dropout=self.dropout, conv_groups=self.conv_groups, lrn=self.lrn,
                            weight_init=self.weight_init)

    @staticmethod
    def trait_outputs(target: Target) -> int:
        """Outputs of a per-trait network: 2 (softmax) for a binary trait, one per class otherwise."""
        return 2 if target.kind == "binary" else target.n_classes

    def configure_models(self) -> None:
        if self.joint:
            self.nets = nn.ModuleList([self._alexnet(self.task.n_logits)])
        else:
            self.nets = nn.ModuleList([self._alexnet(self.trait_outputs(t)) for t in self.task.targets])

    def network_for(self, trait: str | None = None) -> CaffeAlexNet:
        """The network predicting ``trait`` (the joint network in joint mode; default: the first)."""
        if self.joint or trait is None:
            return self.nets[0]
        return self.nets[self.task.names.index(self.task.target(trait).name)]

    # -- forward ----------------------------------------------------------------------------------
    def network_input(self, batch: dict[str, Any]) -> torch.Tensor:
        """The tensor conv1 sees: the image (and, for LACNN, the landmark channel), times ``input_scale``."""
        return batch["image"] * self.input_scale

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self(self.network_input(batch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits in the task layout ``[B, task.n_logits]`` from the network input."""
        if self.joint:
            return self.nets[0](x)
        return torch.cat([self.trait_logits(t, net(x)) for t, net in zip(self.task.targets, self.nets)], dim=1)

    @staticmethod
    def trait_logits(target: Target, outputs: torch.Tensor) -> torch.Tensor:
        """A per-trait network's L8 outputs in the task layout: ``l1 - l0`` for a binary trait (so that
        its sigmoid is the softmax probability of the positive class), unchanged otherwise."""
        if target.kind == "binary":
            return outputs[:, 1:2] - outputs[:, 0:1]
        return outputs

    def independent_networks(self) -> list[tuple[nn.Module, list[int]]]:
        """Per-trait mode: network ``i`` predicts trait ``i`` (none in joint mode)."""
        return [] if self.joint else [(net, [i]) for i, net in enumerate(self.nets)]

    # -- optimisation -----------------------------------------------------------------------------
    def optimizer_parameters(self) -> Any:
        """Weights with the configured weight decay, biases without (eq. 1 regularises weights W)."""
        weights = [p for n, p in self.named_parameters() if p.requires_grad and not n.endswith("bias")]
        biases = [p for n, p in self.named_parameters() if p.requires_grad and n.endswith("bias")]
        return [{"params": weights}, {"params": biases, "weight_decay": 0.0}]

    @classmethod
    def reference_config(cls) -> dict[str, Any]:
        return {"joint": True}   # 40 per-trait AlexNets would be 40x the joint network's size


@register_method("lacnn")
class LACNN(LACNNBaseline):
    """LACNN (s3.1): :class:`LACNNBaseline` with the AUGMENT-FLL channel (Figure 3) as a 4th input
    channel, computed from the batch's landmarks after the datamodule's geometric transforms.

    Args (besides :class:`LACNNBaseline`'s):
        landmark_encoding: ``"unit"`` (index / (k - 1) in [0, 1], the image's scale; default) or
            ``"index"`` (the paper's literal 1..k). The channel is multiplied by ``input_scale`` with
            the image.
    """

    needs_landmarks = True
    uses_landmark_channel = True

    def __init__(self, task: TaskSpec | dict, *, landmark_encoding: str = "unit", **kwargs: Any):
        if landmark_encoding not in LANDMARK_ENCODINGS:
            raise ValueError(f"lacnn: landmark_encoding {landmark_encoding!r} is not one of {LANDMARK_ENCODINGS}")
        self.landmark_encoding = landmark_encoding
        super().__init__(task, **kwargs)

    def network_input(self, batch: dict[str, Any]) -> torch.Tensor:
        image = batch["image"]
        landmarks = batch.get("landmarks")
        if landmarks is None:
            raise ValueError("lacnn needs facial landmarks in every batch (batch['landmarks']); this dataset gives "
                             "none: CelebA reads list_landmarks_align_celeba.txt, any dataset can use the datamodule "
                             "argument landmark_provider: dlib68")
        channel = landmark_channel(landmarks, image.shape[-2], image.shape[-1], self.landmark_encoding)
        return torch.cat([image, channel.to(image)], dim=1) * self.input_scale

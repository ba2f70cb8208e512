"""LNets+ANet (Liu, Luo, Wang & Tang, "Deep Learning Face Attributes in the Wild", ICCV 2015).

Four cascaded stages (section 3, Fig. 3), each a registered method; the runner chains them with
``init_from`` and every stage's checkpoint carries the networks of the stages before it:

=====================  ========================================================================
``lnet_plus``          Optional offline stand-in for LNet+ (sec. 4, ImageNet pre-training): C1-C5
                       trained with attribute labels on aligned faces at random scales; hands
                       its convolutions to ``lnet_o`` (``init_from``).
``lnet_o``             LNet_o (C1-C5 + two FC, sec. 3.1/4) fine-tuned with attribute labels on the
                       whole image ``x_o`` (sigmoid cross-entropy). Test: attributes of LNet_o and
                       the head-shoulder crop located from its averaged C5 map (eq. 3).
``lnet_s``             LNet_s, same structure, fine-tuned on the head-shoulder crops ``x_s`` that
                       the frozen LNet_o proposes; its C5 map gives the face box (coarse to fine).
                       Test: face-box recall at IoU thresholds against ground-truth boxes.
``anet_identity``      ANet (C1-C2 global, C3-C4 locally shared (eq. 4), FC) pre-trained on the
                       face identities of its training identities: softmax + the similarity loss
                       of sec. 4. Test: identity retrieval (1-NN accuracy, verification AUROC).
``anet``               ANet fine-tuned on attributes through an attribute layer on its FC.
``lnets_anet``         The full cascade (sec. 3, Fig. 3 (d)): multi-view ANet features of the
                       located face, concatenated, then one linear SVM (or logistic regression) per
                       attribute, fitted on identities held out from ANet training (sec. 5).
=====================  ========================================================================

No face box is used in training: LNets learn from attribute tags only and boxes, when the data
has them (``batch["box"]``), are only compared with the predictions at test time. On aligned faces
(``localize: false``) the ANet stages take the image itself as the face region ``x_f``.

Choices where the text leaves details open (the layer sizes of Fig. 3 are not in the text):

* LNet: AlexNet [10] convolutions, with the widths the text gives (C1 96 filters of 11x11x3,
  C4 384, C5 256) and AlexNet's C2 256 / C3 384, 3x3/2 max-pooling after C1 and C2 (the "two
  max-pooling" layers), optional LRN as in AlexNet, two FC layers (4096 hidden, as LNet+) on
  AlexNet's pool5 of C5 (an FC on the unpooled 13x13 C5 map would have 177M weights).
* ANet: 5x5 / 3x3 kernels, 2x2 max-pooling after C1, C2 and C4 (the three max-pooling layers),
  C3 and C4 with 2x2 cells (the cells of Fig. 5), no padding in the locally shared layers, FC 256.
* Density (eq. 3): ``rho_i`` is the averaged C5 response summed over a small window (the cut-off
  kernel of Rodriguez & Laio [21]); ``rho`` is scaled to [0, 1] by its maximum and ``sigma`` (in
  cells) by the map diagonal before ``d_i = sqrt(rho_i^2 + sigma_i^2)``; peaks are local maxima
  with a large ``d``; every position joins the peak its chain of nearest denser neighbours reaches
  ([21]); the proposed window is the cluster region (responses above a fraction of its peak) with
  the largest summed density ("the region with the highest density").
* Similarity loss (sec. 4): mean over same-identity pairs in a batch of ``1/2 ||f_i - f_j||^2``
  on the FC features, weighted by ``similarity_weight`` (0.05, DeepID2 [23]).
* Multi-view features (sec. 3.2): ANet is evaluated densely over a face crop slightly larger than
  its input; the views are the centre, the four corner windows and the window whose C4 response
  is largest (the maximum search of eq. 5); their FC vectors are concatenated into ``h_a``.
* Optimiser: the paper uses SGD; the default here is AdamW, which converges within CPU budgets
  from random initialisation (set ``optimizer: {name: SGD, ...}`` to follow the paper).
* LNet+ (ImageNet pre-training, sec. 4) cannot be fetched offline: ``pretrained`` takes torchvision's
  AlexNet weights or a local file, else LNets start from random weights; ``lnet.batch_norm`` (not in
  the paper) is offered as a stand-in that makes training from scratch converge on CPU budgets.
* Not in the paper, all off by default (see :class:`LNetConfig`, :class:`LocalizationConfig`,
  :class:`LNetTrainingStage`, :class:`LNetPlusStage`): the ``lnet_plus`` stand-in; reflect padding and
  global max pooling under the FC layers; a "face present" output trained against clutter-only
  images of the SynthFaces background generator and an L1 penalty on C5 (sparse maps); the
  ``moments`` box of a region; ``calibrate_face_scale`` (one box scale factor chosen on ``val``).

Modules: ``networks`` (LNet, ANet and their configs), ``localization`` (response maps -> boxes, crops,
IoU; pure tensor code), ``identity_losses`` (sec. 4), ``cascade`` (the stages' shared base),
``lnet_stages`` and ``anet_stages`` (the registered methods). The analyses of the paper's figures
(``anet-attribute-groups``, ``lnet-localization``) are in ``benchmarks/analyses/lnets_anet.py``.
"""

from facebench.lightning_modules.lnets_anet.anet_stages import (VIEW_NAMES, ANetAttributeStage, ANetIdentityStage, ANetStage,
                                                      LNetsANetClassifier, split_identities, subset_batch)
from facebench.lightning_modules.lnets_anet.cascade import CascadeStage
from facebench.lightning_modules.lnets_anet.identity_losses import identity_retrieval, identity_softmax_loss, similarity_loss
from facebench.lightning_modules.lnets_anet.lnet_stages import (LNetOStage, LNetPlusStage, LNetSStage, LNetTrainingStage,
                                                      clutter_canvases)
from facebench.lightning_modules.lnets_anet.localization import (COVERAGE_THRESHOLD, FACE_SCALE_GRID, IOU_THRESHOLDS, DensityPeaks,
                                                       LocalizationConfig, box_iou_xywh, calibrate_scale, crop_boxes,
                                                       densest_region, density_peaks, localization_rows, region_box,
                                                       region_moments_box, resize_square, scale_boxes)
from facebench.lightning_modules.lnets_anet.networks import (TORCHVISION_ALEXNET_CONVS, ANet, ANetConfig, LNet, LNetConfig,
                                                   load_pretrained_convs)

__all__ = [
    "ANet", "ANetAttributeStage", "ANetConfig", "ANetIdentityStage", "ANetStage", "COVERAGE_THRESHOLD", "CascadeStage",
    "DensityPeaks", "FACE_SCALE_GRID", "IOU_THRESHOLDS", "LNet", "LNetConfig", "LNetOStage", "LNetPlusStage", "LNetSStage",
    "LNetTrainingStage", "LNetsANetClassifier", "LocalizationConfig", "TORCHVISION_ALEXNET_CONVS", "VIEW_NAMES",
    "box_iou_xywh", "calibrate_scale", "clutter_canvases", "crop_boxes", "densest_region", "density_peaks",
    "identity_retrieval", "identity_softmax_loss", "load_pretrained_convs", "localization_rows", "region_box",
    "region_moments_box", "resize_square", "scale_boxes", "similarity_loss", "split_identities", "subset_batch",
]

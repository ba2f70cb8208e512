"""The gradient weightings facebench takes from the peer library ``torchjd`` (its aggregators), as
plain data: which aggregator, its paper, the scale convention and the options a suite may set.

This module imports nothing (not even torch), so that ``facebench list weightings`` can read it in
a fraction of a second; :mod:`facebench.lightning_modules.weighting.peer` turns every entry into a
registered weighting. Two groups:

* methods facebench has no implementation of (``upgrad``, ``dualproj``, ``config``, ``graddrop``,
  ``gradvac``, ``fairgrad``, ``excess_mtl``, ``cr_mogm``);
* ``torchjd_<name>``: torchjd's own versions of facebench's six gradient methods (``pcgrad``,
  ``mgda``, ``cagrad``, ``imtl``, ``nash_mtl``, ``aligned_mtl``), to run the peer implementation
  beside ours (tests/test_weighting_peer.py compares the directions of the two).

Left out of torchjd's aggregators: ``Mean``, ``Sum``, ``Constant`` (equal weights), ``Random``
(random weights on the gradients: the same update as ``rlw``'s random loss weights, the gradient being
linear in the weights), ``Krum`` and ``TrimmedMean`` (Byzantine-robust federated averaging, not
multi-task methods), ``PCD`` (priority-constrained descent needs a primary task, which face attributes
do not have), ``MoDoWeighting`` and ``SDMGradWeighting`` (they need the gradients of two
independent mini-batches per step, ``J_1 J_2^T``; one training step has one batch).

Scale (``scale``): facebench's weightings are on the mean task loss's scale
(:mod:`facebench.lightning_modules.weighting.base`). ``sum``: the aggregator adds the tasks'
(modified) gradients, so the adapter divides its output by ``K`` (PCGrad, GradDrop, GradVac,
ConFIG); ``mean``: already there (UPGrad, DualProj, MGDA, IMTL-G, Aligned-MTL, CR-MOGM, ExcessMTL);
``own``: the method's equation fixes the scale and it is used as torchjd gives it (Nash-MTL: torchjd
normalises the Gram matrix by its Frobenius norm before solving and clips the update to ``max_norm``;
FairGrad: ``w^(1/alpha)``-balanced weights; CAGrad: the paper's ``g_0 + sqrt(phi) g_w / ||g_w||``
from the normalised Gram matrix).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PeerSpec:
    """One torchjd aggregator as a facebench weighting.

    Args:
        name: the weighting's name (``mtl: {weighting: NAME}``).
        aggregator: the ``torchjd.aggregation`` class.
        paper: the publication (authors, title, venue, year).
        summary: one sentence on what it does.
        scale: ``sum`` (divide by K), ``mean`` or ``own`` (module docstring).
        options: the aggregator's constructor arguments a suite may set, with facebench's defaults
            (torchjd's own where it has one).
        weighted: the aggregator is a weighting of the gradient rows (its ``weighting`` gives
            the weights, which the task-specific parameters' losses then get); else they get 1/K.
        stateful: keeps state per task across steps (sees every task's row, absent ones as zero).
        wraps: for a modifier, the torchjd weighting it wraps (CR-MOGM smooths MGDA's weights).
    """

    name: str
    aggregator: str
    paper: str
    summary: str
    scale: str = "mean"
    options: dict[str, Any] = field(default_factory=dict)
    weighted: bool = True
    stateful: bool = False
    wraps: str | None = None


PEER_SPECS: tuple[PeerSpec, ...] = (
    PeerSpec("upgrad", "UPGrad",
             "Quinton & Rey, \"Jacobian Descent for Multi-Objective Optimization\" (arXiv 2406.16232, 2024)",
             "Unconflicting projection of gradients: each task gradient is projected onto the dual cone of all task "
             "gradients (so that no task's loss increases to first order) and the projections are averaged."),
    PeerSpec("dualproj", "DualProj",
             "Lopez-Paz & Ranzato, \"Gradient Episodic Memory for Continual Learning\" (NeurIPS 2017), Eq. 11",
             "The average gradient projected onto the dual cone of the task gradients (the nearest direction that "
             "increases no task's loss to first order)."),
    PeerSpec("config", "ConFIG",
             "Liu, Chu & Thuerey, \"ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks\" "
             "(ICLR 2025; arXiv 2408.11104), Eq. 2",
             "Conflict-free update: the direction with equal cosine to every unit task gradient (a pseudo-inverse), "
             "scaled by the sum of the gradients' projections on it.",
             scale="sum", weighted=False),
    PeerSpec("graddrop", "GradDrop",
             "Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, \"Just Pick a Sign: Optimizing Deep "
             "Multitask Models with Gradient Sign Dropout\" (NeurIPS 2020), Algorithm 1",
             "Gradient sign dropout: per coordinate, keep the task gradients of one sign, drawn with the "
             "probability of the sign's purity, and drop the others.",
             scale="sum", weighted=False),
    PeerSpec("gradvac", "GradVac",
             "Wang, Tsvetkov, Firat & Cao, \"Gradient Vaccine: Investigating and Improving Multi-task Optimization "
             "in Massively Multilingual Models\" (ICLR 2021)",
             "Gradient vaccine: like PCGrad, but each pair of task gradients is steered towards the cosine "
             "similarity it has on average (an exponential moving average), not only away from conflict.",
             scale="sum", options={"beta": 0.5, "eps": 1e-8}, stateful=True),
    PeerSpec("fairgrad", "FairGrad",
             "Ban & Ji, \"Fair Resource Allocation in Multi-Task Learning\" (ICML 2024), Algorithm 1",
             "Alpha-fair resource allocation: task weights w with (G G^T w)_i = w_i^(-1/alpha); alpha = 1 is "
             "proportional fairness (Nash-MTL's bargaining solution), larger alpha favours the worst task.",
             scale="own", options={"alpha": 1.0, "max_iters": None}),
    PeerSpec("excess_mtl", "ExcessMTL",
             "He, Zhou, Ding, Liu & Wang, \"Robust Multi-Task Learning with Excess Risks\" (ICML 2024), Eq. 9",
             "Excess-risk weighting: task weights follow an exponentiated-gradient step on each task's estimated "
             "excess risk (its distance to its own optimum, from a diagonal second-order estimate), not its loss.",
             options={"robust_step_size": 1.0, "n_warmup_steps": 0}, stateful=True),
    PeerSpec("cr_mogm", "CRMOGMWeighting",
             "Zhou, Zhang, Jiang, Xu & Li, \"On the Convergence of Stochastic Multi-Objective Gradient Manipulation "
             "and Beyond\" (NeurIPS 2022)",
             "Correlation-reduced MGDA: MGDA's min-norm weights smoothed by an exponential moving average over "
             "steps, which removes the bias of stochastic gradient manipulation.",
             options={"alpha": 0.9}, stateful=True, wraps="MGDAWeighting"),
    # torchjd's versions of facebench's own gradient methods
    PeerSpec("torchjd_pcgrad", "PCGrad",
             "Yu, Kumar, Gupta, Levine, Hausman & Finn, \"Gradient Surgery for Multi-Task Learning\" (NeurIPS 2020), "
             "Algorithm 1",
             "PCGrad as torchjd implements it (facebench's own: pcgrad).", scale="sum"),
    PeerSpec("torchjd_mgda", "MGDA",
             "Sener & Koltun, \"Multi-Task Learning as Multi-Objective Optimization\" (NeurIPS 2018), Algorithm 2",
             "MGDA as torchjd implements it (facebench's own: mgda).", options={"epsilon": 1e-3, "max_iters": 100}),
    PeerSpec("torchjd_cagrad", "CAGrad",
             "Liu, Liu, Jin, Stone & Liu, \"Conflict-Averse Gradient Descent for Multi-task Learning\" (NeurIPS 2021), "
             "Algorithm 1",
             "CAGrad as torchjd implements it (facebench's own: cagrad).", scale="own", options={"c": 0.4, "norm_eps": 1e-4}),
    PeerSpec("torchjd_imtl", "IMTLG",
             "Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, \"Towards Impartial Multi-task Learning\" (ICLR 2021), "
             "IMTL-G",
             "IMTL-G as torchjd implements it, generalised to linearly dependent gradients (facebench's own: imtl)."),
    PeerSpec("torchjd_nash_mtl", "NashMTL",
             "Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, \"Multi-Task Learning as a Bargaining "
             "Game\" (ICML 2022), Algorithm 1",
             "Nash-MTL as torchjd implements it: the authors' sequence of convex problems (cvxpy) and norm clipping "
             "(facebench's own: nash_mtl).",
             scale="own", options={"max_norm": 1.0, "update_weights_every": 1, "optim_niter": 20}, stateful=True),
    PeerSpec("torchjd_aligned_mtl", "AlignedMTL",
             "Senushkin, Patakin, Kuznetsov & Konushin, \"Independent Component Alignment for Multi-Task Learning\" "
             "(CVPR 2023), Algorithm 1",
             "Aligned-MTL as torchjd implements it (facebench's own: aligned_mtl).", options={"scale_mode": "min"}),
)


def peer_rows() -> list[dict[str, str]]:
    """``facebench list weightings`` rows of the torchjd weightings (no torch import)."""
    return [{"weighting": s.name, "class": f"torchjd.aggregation.{s.aggregator}", "kind": "gradient", "paper": s.paper,
             "description": s.summary} for s in PEER_SPECS]

"""Checkpoint selection per network, for methods made of independently trained networks.

A paper that trains one network per attribute (the semantic-features CNN's individual networks,
the FAD paper's per-trait AlexNets) selects each network on its own validation score. Held in
one module, the networks would otherwise share one checkpoint: the epoch where their *mean* score
was best. :class:`NetworkSelection` keeps, for every network, a copy of its weights at the epoch of
its own best validation score (its targets' mean of the method's monitored metric); the base task
loads them before testing or predicting, from the last checkpoint, which holds every copy.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn


class NetworkSelection:
    """Best validation score, epoch and weights of each of ``n`` networks (``mode``: "min" / "max")."""

    def __init__(self, n_networks: int, mode: str):
        if mode not in ("min", "max"):
            raise ValueError(f"selection mode {mode!r} is not 'min' or 'max'")
        self.mode = mode
        self.scores: list[float] = [math.nan] * n_networks
        self.epochs: list[int] = [-1] * n_networks
        self.states: list[dict[str, torch.Tensor] | None] = [None] * n_networks

    def _better(self, new: float, old: float) -> bool:
        if math.isnan(new):
            return False
        if math.isnan(old):
            return True
        return new < old if self.mode == "min" else new > old

    def update(self, scores: Sequence[float], networks: Sequence[nn.Module], epoch: int) -> list[int]:
        """Keep the weights of every network whose score improved; returns their indices."""
        improved = []
        for i, (score, net) in enumerate(zip(scores, networks)):
            if self._better(float(score), self.scores[i]):
                self.scores[i], self.epochs[i] = float(score), int(epoch)
                self.states[i] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                improved.append(i)
        return improved

    def apply(self, networks: Sequence[nn.Module]) -> None:
        """Load each network's best weights (networks never validated keep theirs)."""
        for net, state in zip(networks, self.states):
            if state is not None:
                net.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "scores": list(self.scores), "epochs": list(self.epochs), "states": list(self.states)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["scores"]) != len(self.scores):
            raise ValueError(f"checkpoint selects {len(state['scores'])} networks, the method has {len(self.scores)}")
        self.mode, self.scores, self.epochs, self.states = state["mode"], list(state["scores"]), list(state["epochs"]), list(state["states"])

"""The theory check: singular-value spectra of trained deterministic weights and the Eckart–Young tail.

For a dense W with singular values σ_1 ≥ σ_2 ≥ …, the best rank-r approximation error is
‖W − W_r‖_F² = Σ_{i>r} σ_i² (Eckart–Young–Mirsky); the paper's loss bound carries this tail. We report it
per layer, absolute and as a fraction of ‖W‖_F², next to the rank the low-rank model uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from model_core.layers.deterministic import DeterministicLinear


def spectrum_report(model: nn.Module, rank: int) -> list[dict[str, Any]]:
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, DeterministicLinear):
            continue
        w = module.linear.weight.detach().double()
        s = torch.linalg.svdvals(w)
        energy = s.pow(2)
        total = float(energy.sum())
        tail = float(energy[rank:].sum())
        rows.append(
            {
                "layer": name,
                "shape": list(w.shape),
                "rank_used": min(rank, min(w.shape)),
                "singular_values": [float(v) for v in s],
                "tail_energy": tail,
                "tail_fraction": tail / total if total > 0 else 0.0,
                "effective_rank_99": int((torch.cumsum(energy, 0) / total < 0.99).sum().item()) + 1,
            }
        )
    return rows

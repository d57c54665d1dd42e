"""Sparsity for the expert FFNs, as pure functions (no I/O): masks, mask maintenance, the SET and RigL mask
updates, magnitude pruning, rewinding and the distillation loss.

Conventions. A *mask* is a bool tensor of a weight matrix's shape: True = the weight exists (is trained and stored),
False = it is pruned and must stay exactly 0.0. Masks are kept per matrix in a dict {parameter name: mask}, keyed
by the Hugging Face OLMoE names (`model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight`); only the expert
matrices are masked, the trunk and the router stay dense. *Density* is the fraction of True entries; *sparsity*
is 1 − density. Functions that change weights or masks return new tensors; those named `apply_*`, `mask_*` and
`reset_*` change the given tensors in place (they are what a training step calls) and say so.

Papers followed:
- SET: Mocanu et al. 2018, "Scalable training of artificial neural networks with adaptive sparse connectivity
  inspired by network science" (Nature Communications): after an update interval, remove a fraction ζ of each
  matrix's active weights with the smallest magnitude, and add the same number at random among absent ones.
- RigL: Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners" (ICML): drop by magnitude, grow the
  absent connections with the largest dense-gradient magnitude, new connections start at zero; the drop fraction
  follows f(t) = α/2 · (1 + cos(π t / T_end)) every ΔT steps until T_end, then the mask is frozen. SET here uses
  the same cosine schedule (as RigL's own SET baseline does), so the two differ only in how they regrow.
- Lottery tickets: Frankle & Carbin 2019 (ICLR), and Frankle et al. 2020 "Linear Mode Connectivity and the Lottery
  Ticket Hypothesis" (ICML) for rewinding to an early training step k instead of to initialisation: iterative
  magnitude pruning (IMP) removes a fraction of the remaining weights per round, then rewinds the survivors to their
  values at step k.
- Distillation: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network": KL(teacher ‖ student)
  between the softmaxes at temperature T, multiplied by T² so its gradients keep their size as T changes, mixed
  with the ordinary cross-entropy on the hard next-byte targets.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

EXPERT_MATRIX = re.compile(r"^model\.layers\.\d+\.mlp\.experts\.\d+\.(gate|up|down)_proj\.weight$")


def is_expert_matrix(name: str) -> bool:
    """True for the expert FFN weight matrices (the only ones this module masks)."""
    return EXPERT_MATRIX.match(name) is not None


def masks_from_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The masks of a pruned package's expert matrices: True where the stored weight is non-zero.

    weights: {name: float tensor [rows, cols]} (any names; only expert matrices get masks).
    Returns {name: bool tensor [rows, cols]}.
    """
    return {name: w != 0 for name, w in weights.items() if is_expert_matrix(name)}


def density(masks: dict[str, torch.Tensor]) -> float:
    """Fraction of weights present over all masked matrices together (0..1)."""
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return kept / total if total else 1.0


@torch.no_grad()
def apply_masks(params: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    """In place: zero every masked-out weight (params {name: tensor}; names without a mask are left alone)."""
    for name, mask in masks.items():
        params[name].mul_(mask)


@torch.no_grad()
def mask_gradients(params: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor]) -> None:
    """In place: zero the gradient of every masked-out weight, so optimiser moments never see pruned weights."""
    for name, mask in masks.items():
        grad = params[name].grad
        if grad is not None:
            grad.mul_(mask)


@torch.no_grad()
def reset_moments(state: dict, positions: torch.Tensor) -> None:
    """In place: zero Adam's moments (`exp_avg`, `exp_avg_sq`) of one parameter at `positions` (bool, its shape).

    Used after a SET/RigL update for the weights just dropped or grown: a regrown weight starts from zero with no
    history, as in RigL's implementation, and a dropped one keeps no momentum that could move it off zero.
    """
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key].masked_fill_(positions, 0.0)


def random_mask(shape: tuple[int, ...], density_: float, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random mask with exactly round(density × numel) True entries (static sparse training, SET/RigL
    initial topology; Erdős–Rényi at a fixed density per matrix)."""
    n = math.prod(shape)
    keep = int(round(density_ * n))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:keep]] = True
    return mask.view(shape)


def update_fraction(step: int, alpha: float, t_end: int) -> float:
    """RigL's cosine-decayed drop fraction f(t) = α/2 · (1 + cos(π t / T_end)) for t < T_end, else 0.

    step: optimiser steps done (t); alpha: initial fraction of each matrix's active weights to replace (α, RigL
    uses 0.3); t_end: the step after which the mask no longer changes (RigL: 75 % of training).
    """
    if step >= t_end:
        return 0.0
    return alpha / 2 * (1 + math.cos(math.pi * step / t_end))


def is_update_step(step: int, delta_t: int, t_end: int) -> bool:
    """Whether the mask is updated after optimiser step `step` (1-based count): every ΔT steps, before T_end."""
    return step > 0 and step % delta_t == 0 and step < t_end


def _drop_count(mask: torch.Tensor, fraction: float) -> int:
    return int(fraction * int(mask.sum()))


def _drop_smallest(weight: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The mask with the k active weights of smallest |w| removed (ties broken by position)."""
    if k == 0:
        return mask.clone()
    score = weight.abs().flatten().masked_fill(~mask.flatten(), math.inf)
    drop = torch.topk(score, k, largest=False).indices
    out = mask.flatten().clone()
    out[drop] = False
    return out.view(mask.shape)


def set_update(weight: torch.Tensor, mask: torch.Tensor, fraction: float,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One SET update of one matrix (Mocanu et al. 2018).

    weight: float [rows, cols] (masked-out entries are 0); mask: bool [rows, cols]; fraction: share of the active
    weights to replace (ζ, here f(t)). Drops the k = ⌊fraction · active⌋ active weights of smallest magnitude, then
    activates k positions chosen uniformly at random among the inactive ones (which may include just-dropped
    ones). Returns (new weight, new mask, k): density is unchanged; every grown weight is 0.0.
    """
    k = _drop_count(mask, fraction)
    after_drop = _drop_smallest(weight, mask, k)
    candidates = (~after_drop).flatten().nonzero(as_tuple=True)[0]
    grown = candidates[torch.randperm(candidates.numel(), generator=generator)[:k]]
    return _regrow(weight, after_drop, grown, k)


def rigl_update(weight: torch.Tensor, mask: torch.Tensor, dense_grad: torch.Tensor,
                fraction: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One RigL update of one matrix (Evci et al. 2020).

    weight, dense_grad: float [rows, cols]; dense_grad is the loss gradient with respect to every weight, pruned
    ones included (take it before masking gradients); mask: bool [rows, cols]. Drops the k = ⌊fraction · active⌋
    active weights of smallest |w|, then activates the k inactive positions with the largest |gradient| (ties
    broken by position). Returns (new weight, new mask, k): density is unchanged; every grown weight is 0.0.
    """
    k = _drop_count(mask, fraction)
    after_drop = _drop_smallest(weight, mask, k)
    if k == 0:
        return weight * after_drop, after_drop, 0
    score = dense_grad.abs().flatten().masked_fill(after_drop.flatten(), -math.inf)
    grown = torch.topk(score, k, largest=True).indices
    return _regrow(weight, after_drop, grown, k)


def _regrow(weight: torch.Tensor, after_drop: torch.Tensor, grown: torch.Tensor,
            k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    if grown.numel() != k:
        raise ValueError(f"cannot regrow {k} weights: only {grown.numel()} positions are inactive")
    mask = after_drop.flatten().clone()
    mask[grown] = True
    mask = mask.view(after_drop.shape)
    new = (weight * after_drop).flatten()
    new[grown] = 0.0  # new connections start at zero
    return new.view(weight.shape), mask, k


def magnitude_mask(weight: torch.Tensor, sparsity: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-matrix magnitude pruning: the mask keeping the round((1 − sparsity) · numel) weights of largest |w|
    among those `mask` still keeps (all when None). sparsity is of the whole matrix, 0 ≤ sparsity < 1; it must
    not be lower than the matrix's current sparsity (pruning never regrows). Ties broken by position.
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity {sparsity} is outside [0, 1)")
    current = torch.ones_like(weight, dtype=torch.bool) if mask is None else mask
    keep = int(round((1 - sparsity) * weight.numel()))
    active = int(current.sum())
    if keep > active:
        raise ValueError(f"sparsity {sparsity} would keep {keep} weights but only {active} are left")
    return _drop_smallest(weight, current, active - keep)


def imp_schedule(final_sparsity: float, rounds: int) -> list[float]:
    """Iterative magnitude pruning targets: each round removes the same fraction of the remaining weights, so that
    round r reaches sparsity 1 − (1 − final)^(r/rounds) (Frankle & Carbin 2019). E.g. 90 % in 3 rounds:
    [0.5358, 0.7846, 0.9]."""
    return [1 - (1 - final_sparsity) ** (r / rounds) for r in range(1, rounds + 1)]


@torch.no_grad()
def rewind(params: dict[str, torch.Tensor], saved: dict[str, torch.Tensor],
           masks: dict[str, torch.Tensor]) -> None:
    """In place: restore every parameter in `saved` (the weights at the rewind step k; Frankle et al. 2020) and
    zero the weights the masks remove. params and saved: {name: tensor} of equal shapes."""
    for name, value in saved.items():
        params[name].copy_(value)
    apply_masks(params, masks)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float, kd_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Knowledge distillation (Hinton et al. 2015).

    student_logits, teacher_logits: [..., vocab] (nats, unnormalised); targets: [...] next-token ids.
    kd = T² · mean over positions of KL(softmax(teacher/T) ‖ softmax(student/T)) (nats per position);
    ce = mean next-token cross-entropy of the student at temperature 1 (nats per position).
    Returns (kd_weight · kd + (1 − kd_weight) · ce, kd, ce). kd is exactly 0 when the logits are equal.
    """
    vocab = student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, vocab).float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.reshape(-1, vocab).float() / temperature, dim=-1)
    kd = (t.exp() * (t - s)).sum(-1).mean() * temperature ** 2
    ce = F.cross_entropy(student_logits.reshape(-1, vocab), targets.reshape(-1))
    return kd_weight * kd + (1 - kd_weight) * ce, kd, ce

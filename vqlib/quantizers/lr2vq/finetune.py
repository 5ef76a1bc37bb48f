"""Fine-tuning the LR²VQ layers of a model end to end: :func:`finetune`."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from .codec import LR2VQWeight

__all__ = ["finetune"]

ASSIGNMENTS = ("fixed", "soft")
TRAIN = ("codebooks", "all")


def finetune(
    model: nn.Module,
    loader: Iterable,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    lr: float = 1e-3,
    assignments: str = "fixed",
    temperature: tuple[float, float] = (0.3, 0.01),
    train: str = "codebooks",
) -> list[float]:
    """Fine-tune the LR²VQ layers of ``model`` end to end on ``loss_fn(model(x), y)``, with Adam.

    ``loader`` yields ``(x, y)`` batches and is cycled until ``steps`` steps.

    ``assignments="fixed"``: the assignments stay; C and P get the gradient.

    ``assignments="soft"`` (differentiable k-means as in DKM, Cho et al. 2022,
    which the paper compares against): each layer's R becomes a trainable parameter
    (started at C[a]) and the weight is A·C·P with
    A_ij = softmax_j(−‖R_i − C_j‖² / (τ·s)), s the layer's mean squared
    nearest-centroid gap. τ is annealed geometrically from ``temperature[0]``
    to ``temperature[1]``; at the end (or on an error) the assignments are
    hardened to a_i = argmin_j ‖R_i − C_j‖² and R is dropped. Soft mode holds an
    N×K matrix per layer. Layers built with ``codebook_size=None`` have no clusters: their
    C (= R) and P train directly in either mode, which is the paper's low-rank
    pre-training.

    ``train="codebooks"`` optimises only C and P (and R); ``"all"`` also every
    other parameter of the model (biases, layers left dense). The model is in
    train mode during the steps (batch-norm statistics move) and back in its
    own mode after.

    Returns the loss of every step.
    """
    if assignments not in ASSIGNMENTS:
        raise ValueError(f"assignments must be one of {ASSIGNMENTS}, got {assignments!r}")
    if train not in TRAIN:
        raise ValueError(f"train must be one of {TRAIN}, got {train!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t_start, t_end = (float(t) for t in temperature)
    if not (t_start > 0 and t_end > 0):
        raise ValueError(f"temperatures must be positive, got {temperature}")
    weights = [mod for mod in model.modules() if isinstance(mod, LR2VQWeight)]
    if not weights:
        raise ValueError("the model has no LR²VQ layer; run compress_model first")
    soft = assignments == "soft"
    was_training = model.training
    try:
        if soft:
            for w in weights:
                if w.clustered:
                    w.soften(t_start)
        params = [p for w in weights for p in w.parameters()]
        if train == "all":
            seen = {id(p) for p in params}
            params += [p for p in model.parameters() if id(p) not in seen]
        opt = torch.optim.Adam(params, lr=lr)
        device = weights[0].centroids.device
        batches = _cycle(loader)
        model.train()
        losses = []
        for step in range(steps):
            if soft:
                tau = t_start * (t_end / t_start) ** (step / max(steps - 1, 1))
                for w in weights:
                    w.temperature = tau
            x, y = next(batches)
            loss = loss_fn(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        for w in weights:
            w.harden()
        model.train(was_training)
    return losses


def _cycle(loader: Iterable):
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the loader yielded no batch")

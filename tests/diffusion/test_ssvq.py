"""tests for vqlib/diffusion/ssvq.py: sign-split start, STE latent signs, oscillation freezing, stored signs."""

import torch
import torch.nn as nn

from vqlib.diffusion import SignSplitLinear, SSVQConfig, kmeans_init, sign_ste
from vqlib.kernels.format import unpack_signs


def _layer(**kw):
    torch.manual_seed(0)
    linear = nn.Linear(16, 12)
    init = kmeans_init(linear.weight, 4, 8, signs=True, generator=torch.Generator().manual_seed(0))
    return linear, init, SignSplitLinear(linear, init, **kw)


def test_sign_ste_is_exact_and_passes_the_gradient_through():
    theta = torch.tensor([-2.0, -1e-8, 0.0, 3e-9, 5.0], requires_grad=True)
    s = sign_ste(theta)
    assert s.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    (s * torch.arange(5.0)).sum().backward()
    assert theta.grad.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_start_is_the_sign_split_of_the_weight():
    linear, init, layer = _layer()
    assert (init.codebook >= 0).all()  # the codebook clusters magnitudes
    assert torch.equal(layer.negative(), linear.weight.detach() < 0)
    w = layer.weight().detach()
    nz = w != 0
    assert torch.equal((w < 0)[nz], (linear.weight.detach() < 0)[nz])


def test_oscillating_signs_freeze_and_stay():
    _, _, layer = _layer(flip_momentum=0.5, freeze_start=0.3, freeze_end=0.3)
    with torch.no_grad():
        layer.theta.copy_(torch.where(layer.theta < 0, -0.01, 0.01))
    steady = torch.zeros_like(layer.frozen)
    steady[:, 8:] = True  # these signs never flip
    for step in range(6):  # flip the first half of the inputs every step
        with torch.no_grad():
            layer.theta[:, :8].neg_()
        layer.after_step(step, 6)
    assert layer.frozen[:, :8].all() and not layer.frozen[steady].any()
    before = layer.negative().clone()
    with torch.no_grad():
        layer.theta[:, :8].neg_()
    assert torch.equal(layer.negative()[:, :8], before[:, :8])  # frozen: the latent no longer decides
    assert torch.equal(layer.negative()[:, 8:], layer.theta[:, 8:].detach() < 0)  # not frozen: the latent decides


def test_stored_signs_are_exactly_the_trained_ones():
    _, _, layer = _layer()
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    target = torch.randn(12, 16)
    for step in range(30):
        loss = (layer.weight() - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        layer.after_step(step, 30)
    neg = layer.negative()
    assert (neg != (torch.as_tensor(_layer()[0].weight.detach()) < 0)).any()  # some signs did flip
    q = layer.to_module(SSVQConfig(codebook_dtype="float32", scales_dtype="float32"))
    assert q.signs is not None
    assert torch.equal(unpack_signs(q.signs, 16), neg)
    w = q.dequantize(torch.float32)
    nz = w != 0
    assert torch.equal((w < 0)[nz], neg[nz])
    assert torch.allclose(w, layer.weight().detach(), atol=1e-6)

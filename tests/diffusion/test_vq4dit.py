"""tests for vqlib/diffusion/vq4dit.py: candidate sets, softmax ratios, progressive freezing, the stored layer."""

import torch
import torch.nn as nn

from vqlib.diffusion import SoftVQLinear, VQ4DiTConfig, kmeans_init
from vqlib.kernels import VQLinear
from vqlib.quantizers import nearest


def _layer(n=24, d=16, v=4, k=16, candidates=3):
    torch.manual_seed(0)
    linear = nn.Linear(d, n)
    init = kmeans_init(linear.weight, v, k, generator=torch.Generator().manual_seed(0))
    return linear, init, SoftVQLinear(linear, init, candidates=candidates)


def test_candidates_are_the_nearest_codewords_and_ratios_inverse_to_distance():
    linear, init, soft = _layer()
    sub = init.normalised.reshape(-1, 4)
    dist, idx = nearest(sub, init.codebook, k=3)
    assert torch.equal(soft.candidates, idx)
    r = soft.ratios()
    d = dist.sqrt()
    # softmax of −log d: r_a ∝ 1/d_a, so r_a · d_a is the same for every candidate of a sub-vector
    prod = r * d
    assert torch.allclose(prod, prod[:, :1].expand_as(prod), rtol=1e-4, atol=1e-6)
    # the soft weight is the ratio-weighted average of the candidates, times the row scale
    mix = (r[..., None] * init.codebook[idx]).sum(1).reshape(24, 16) * init.scales[:, None]
    assert torch.allclose(soft.weight(), mix, atol=1e-6)


def test_progressive_freezing_rule():
    _, _, soft = _layer()
    with torch.no_grad():
        soft.logits.zero_()
        soft.logits[:5, 1] = 10.0  # ratio e^10/(e^10+2) ≈ 0.9999 > 0.99: freezes to candidate 1
        soft.logits[5:10, 2] = 4.0  # ratio e^4/(e^4+2) ≈ 0.965 < 0.99: stays soft
    assert soft.progressive_freeze() == 5
    assert soft.frozen[:5].all() and not soft.frozen[5:].any()
    assert torch.equal(soft.choice[:5], torch.ones(5, dtype=torch.long))
    frozen_codes = soft.codes()[:5].clone()
    opt = torch.optim.Adam([soft.logits, soft.codebook], lr=0.5)
    for _ in range(20):  # push every logit around: frozen assignments must not move
        loss = (soft.weight() * torch.randn(24, 16)).sum() + soft.regulariser()
        opt.zero_grad()
        loss.backward()
        assert soft.logits.grad[:5].abs().max() == 0  # frozen sub-vectors take no part
        opt.step()
        soft.progressive_freeze()
    assert torch.equal(soft.codes()[:5], frozen_codes)
    assert torch.equal(soft.ratios()[:5], torch.nn.functional.one_hot(torch.ones(5, dtype=torch.long), 3).float())


def test_layer_turns_hard_past_99_percent_frozen_and_ends_hard():
    _, _, soft = _layer()
    with torch.no_grad():
        soft.logits.zero_()
        soft.logits[:-1, 0] = 10.0  # all but one of 96 sub-vectors: 98.96% < 99%, not hard yet
    soft.progressive_freeze()
    assert not soft.hard and soft.regulariser() > 0
    with torch.no_grad():
        soft.logits[-1, 2] = 10.0
    soft.progressive_freeze()
    assert soft.hard and soft.frozen.all() and soft.regulariser() == 0
    codes = soft.codes()
    w = soft.codebook[codes].reshape(24, 16) * soft.scales[:, None]
    assert torch.allclose(soft.weight(), w)


def test_to_module_stores_the_hard_assignment_in_the_vqlinear_format():
    linear, _, soft = _layer()
    with torch.no_grad():
        soft.logits.normal_()
    expect_codes = soft.candidates.gather(1, soft.ratios().argmax(-1, keepdim=True))[:, 0]
    q = soft.to_module(VQ4DiTConfig(codebook_dtype="float32", scales_dtype="float32"))
    assert isinstance(q, VQLinear) and q.codes.dtype == torch.uint8
    assert torch.equal(q.codes.long().reshape(-1), expect_codes)
    expect = soft.codebook[expect_codes].reshape(24, 16) * soft.scales[:, None]
    assert torch.allclose(q.dequantize(torch.float32), expect.detach(), atol=1e-6)
    assert torch.equal(q.bias, linear.bias.detach())


def test_every_assignment_turns_hard_after_harden_at_of_the_steps():
    linear, init, _ = _layer()
    soft = SoftVQLinear(linear, init, candidates=3, harden_at=0.5)
    soft.after_step(3, 10)  # step 4 of 10: still soft
    assert not soft.hard
    expect = soft.codes()
    soft.after_step(4, 10)  # step 5 of 10: hard, each sub-vector on its largest ratio
    assert soft.hard and torch.equal(soft.codes(), expect)

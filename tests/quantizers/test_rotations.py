import pytest
import torch

from vqlib.quantizers import SAQ
from vqlib.quantizers import hadamard_transform as exported_hadamard
from vqlib.quantizers import random_orthogonal as exported_orthogonal
from vqlib.quantizers.rotations import hadamard_transform, random_orthogonal


def test_hadamard_is_orthonormal_and_self_inverse():
    x = torch.randn(5, 3, 32, dtype=torch.float64)
    hx = hadamard_transform(x)
    torch.testing.assert_close(hx.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(hadamard_transform(hx), x)
    eye = hadamard_transform(torch.eye(4, dtype=torch.float64)) * 2
    assert eye.abs().eq(1).all() and torch.equal(eye[0], torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="power-of-2"):
        hadamard_transform(torch.randn(2, 12))
    assert exported_hadamard is hadamard_transform and exported_orthogonal is random_orthogonal


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_random_orthogonal_is_the_sign_fixed_qr_of_a_gaussian(n):
    m = random_orthogonal(n, torch.Generator().manual_seed(n))
    assert m.shape == (n, n) and m.dtype == torch.float32
    torch.testing.assert_close(m.double() @ m.double().T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-6)
    # the same draw: one float64 Gaussian matrix, Q of its QR with R's diagonal signs moved into Q
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    assert torch.equal(m, (q * torch.sign(torch.diagonal(r))).float())
    # hence a = M R' with R' = Mᵀa upper triangular and a positive diagonal (what makes the law Haar)
    r_fixed = m.double().T @ a
    assert torch.diagonal(r_fixed).gt(0).all()
    torch.testing.assert_close(torch.tril(r_fixed, -1), torch.zeros(n, n, dtype=torch.float64), rtol=0, atol=1e-5)


def test_saq_segment_rotations_are_random_orthogonal_draws_in_plan_order():
    # SAQ draws its segment rotations one after another from one generator seeded with its seed
    x = torch.randn(300, 24) * torch.linspace(3, 0.2, 24)
    saq = SAQ(24, bits=3, plan=[(8, 4), (8, 2), (8, 0)], seed=3).fit(x)
    g = torch.Generator().manual_seed(3)
    rotations = [s.rotation for s in saq.segments() if s.bits > 0]
    assert len(rotations) == 2
    for rot in rotations:
        assert torch.equal(rot, random_orthogonal(len(rot), g))


def test_random_orthogonal_is_unbiased():
    # Haar: every entry is symmetric around 0. Without the sign fix, Householder QR
    # gives R_00 = −sign(a_00)‖a_0‖, so Q_00 = −|a_00|/‖a_0‖ would always be negative.
    gen = torch.Generator().manual_seed(0)
    first = torch.stack([random_orthogonal(4, gen)[0, 0] for _ in range(2000)])
    assert abs(first.mean().item()) < 0.05  # the std of the mean is 0.5 / √2000 ≈ 0.011
    assert 0.4 < (first > 0).float().mean().item() < 0.6


def test_random_orthogonal_bad_input():
    gen = torch.Generator().manual_seed(0)
    for n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            random_orthogonal(n, gen)
    with pytest.raises(ValueError, match="generator must be a torch.Generator, got int"):
        random_orthogonal(4, 0)

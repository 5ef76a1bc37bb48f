import torch
import torch.nn.functional as F

from vqlib.quantizers import SimVQ


def test_codebook_is_linear_map_of_frozen_basis():
    q = SimVQ(16, 64)
    basis = q.basis
    assert not basis.requires_grad and "basis" in q.state_dict()
    torch.testing.assert_close(basis.std(), torch.tensor(16**-0.5), rtol=0.1, atol=0)
    w, b = q.codebook_proj.weight, q.codebook_proj.bias
    torch.testing.assert_close(q.codebook, basis @ w.T + b)


def test_decode_applies_the_projection():
    q = SimVQ(8, 32).eval()
    with torch.no_grad():
        q.codebook_proj.weight.mul_(3.0)
        q.codebook_proj.bias.add_(1.0)
    idx = torch.arange(32)
    expected = q.codebook_proj(q.basis)
    torch.testing.assert_close(q.decode(idx), expected)
    assert not torch.allclose(q.decode(idx), q.basis)


def test_loss_trains_only_the_projection_and_the_encoder():
    torch.manual_seed(0)
    q = SimVQ(8, 32, beta=0.25)
    x = torch.randn(40, 8, requires_grad=True)
    out = q(x)
    zq = q.codebook[out.indices]
    torch.testing.assert_close(out.loss, F.mse_loss(zq, x.detach()) + 0.25 * F.mse_loss(x.detach(), zq))
    out.loss.backward()
    assert q.codebook_proj.weight.grad.abs().sum() > 0 and q.codebook_proj.bias.grad.abs().sum() > 0
    torch.testing.assert_close(x.grad, 0.25 * 2 * (x - zq).detach() / x.numel())


def test_learning_moves_all_codes():
    torch.manual_seed(0)
    q = SimVQ(4, 256)
    opt = torch.optim.Adam(q.parameters(), lr=3e-2)
    data = torch.randn(512, 4) * 3 + 5
    for _ in range(300):
        opt.zero_grad()
        q(data[torch.randint(512, (128,))]).loss.backward()
        opt.step()
    q.eval()
    q.reset_usage()
    out = q(data)
    # from the one-code start (error = variance) to a spread codebook
    assert F.mse_loss(out.quantized, data) < 0.35 * data.var()
    assert q.usage().used > 0.3

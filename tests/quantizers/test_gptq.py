import pytest
import torch

from vqlib.quantizers import gptq_quantize

STEP = 0.25


def rtn(w: torch.Tensor) -> torch.Tensor:
    """Round to the nearest multiple of STEP: a scalar quantize_group."""
    return torch.round(w / STEP) * STEP


def correlated_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=gen, dtype=torch.float64) @ torch.randn(5, d, generator=gen, dtype=torch.float64)
    X = X + 0.2 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    return X * torch.linspace(0.5, 2.0, d, dtype=torch.float64)


def output_error(W: torch.Tensor, W_hat: torch.Tensor, X: torch.Tensor) -> float:
    return (X @ (W.double() - W_hat.double()).T).norm().item()


def obq_reference(W: torch.Tensor, H: torch.Tensor, quantize, damp: float) -> torch.Tensor:
    """OBQ in a fixed left-to-right order, written from its formulas with an explicit inverse:
    quantize column q, move the others by −(w_q − ŵ_q) / [H⁻¹]_qq · [H⁻¹]_{q,:}, then remove q from H⁻¹."""
    W, H = W.double().clone(), H.double().clone()
    H += damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    out = torch.zeros_like(W)
    for q in range(W.shape[1]):
        out[:, q] = quantize(W[:, q : q + 1].float()).double()[:, 0]
        err = (W[:, q] - out[:, q]) / Hinv[q, q]
        W -= err[:, None] * Hinv[q][None, :]
        Hinv -= Hinv[:, q : q + 1] @ Hinv[q : q + 1, :] / Hinv[q, q]
    return out.float()


def test_identity_or_diagonal_hessian_is_columnwise_rtn_exactly():
    W = torch.randn(12, 16)
    for H in (torch.eye(16), torch.diag(torch.rand(16) + 0.1)):
        for block_size in (1, 4, 16):
            assert torch.equal(gptq_quantize(W, H, rtn, block_size=block_size), rtn(W))


def test_matches_obq_column_by_column():
    X = correlated_inputs(512, 24, seed=1)
    W = torch.randn(10, 24)
    H = (X.T @ X).float()
    ours = gptq_quantize(W, H, rtn, block_size=1, damp=0.01)
    reference = obq_reference(W, H, rtn, damp=0.01)
    # both are on the grid; a weight may round the other way where the two float paths differ by an ulp
    assert torch.equal(rtn(ours), ours)
    assert (ours != reference).float().mean().item() < 0.01


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("block_size", [1, 4])
def test_error_feedback_never_loses_to_rtn_on_correlated_inputs(seed, block_size):
    X = correlated_inputs(1024, 32, seed)
    W = torch.randn(16, 32, generator=torch.Generator().manual_seed(100 + seed))
    W_hat = gptq_quantize(W, X.T @ X, rtn, block_size=block_size)
    assert W_hat.shape == W.shape and W_hat.dtype == W.dtype
    assert torch.equal(rtn(W_hat), W_hat)  # every value came out of quantize_group
    assert output_error(W, W_hat, X) <= output_error(W, rtn(W), X)


def test_error_feedback_cuts_the_output_error():
    errors = []
    for seed in range(4):
        X = correlated_inputs(1024, 32, seed)
        W = torch.randn(16, 32, generator=torch.Generator().manual_seed(100 + seed))
        errors.append(output_error(W, gptq_quantize(W, X.T @ X, rtn), X) / output_error(W, rtn(W), X))
    assert sum(errors) / len(errors) < 0.8


def test_dead_inputs_and_calls():
    X = correlated_inputs(256, 8, seed=0)
    X[:, 2] = 0  # an input no calibration row reaches
    W = torch.randn(5, 8)
    before = W.clone()
    seen = []

    def quantize(block):
        seen.append(block.clone())
        return rtn(block)

    W_hat = gptq_quantize(W, X.T @ X, quantize, block_size=2)
    assert torch.equal(W, before), "the input weight is not modified"
    assert [b.shape for b in seen] == [(5, 2)] * 4 and all(b.dtype == W.dtype for b in seen)
    assert torch.equal(seen[0], W[:, :2])  # the first block is quantized as given
    assert bool(torch.isfinite(W_hat).all()) and bool((W_hat[:, 2] == 0).all())


def test_bad_input():
    W, H = torch.randn(4, 8), torch.eye(8)
    with pytest.raises(
        ValueError, match=r"hessian must be \(in, in\) = \(8, 8\) for weight of shape \(4, 8\), got \(8, 6\)"
    ):
        gptq_quantize(W, torch.randn(8, 6), rtn)
    with pytest.raises(ValueError, match=r"hessian must be \(in, in\) = \(8, 8\) .* got \(6, 6\)"):
        gptq_quantize(W, torch.eye(6), rtn)
    with pytest.raises(ValueError, match="hessian must be a matrix, got shape"):
        gptq_quantize(W, torch.ones(8), rtn)
    with pytest.raises(ValueError, match="weight must be a matrix"):
        gptq_quantize(torch.randn(8), H, rtn)
    with pytest.raises(ValueError, match="quantize_group must be a callable .* got str"):
        gptq_quantize(W, H, "rtn")
    with pytest.raises(ValueError, match="block_size must be a positive divisor of in = 8, got 3"):
        gptq_quantize(W, H, rtn, block_size=3)
    with pytest.raises(ValueError, match="damp must be a number >= 0"):
        gptq_quantize(W, H, rtn, damp=-0.1)
    with pytest.raises(ValueError, match="weight contains NaN or inf"):
        gptq_quantize(torch.full((4, 8), float("nan")), H, rtn)
    with pytest.raises(ValueError, match="weight must be floating point"):
        gptq_quantize(torch.ones(4, 8, dtype=torch.long), H, rtn)
    with pytest.raises(
        ValueError, match=r"quantize_group must return a tensor of the block's shape \(4, 2\), got \(4, 1\)"
    ):
        gptq_quantize(W, H, lambda w: w[:, :1], block_size=2)
    with pytest.raises(ValueError, match="quantize_group returned NaN or inf for columns 0:1"):
        gptq_quantize(W, H, lambda w: w * float("nan"))
    with pytest.raises(ValueError, match="not positive definite even after damping"):
        gptq_quantize(W, -torch.eye(8), rtn)

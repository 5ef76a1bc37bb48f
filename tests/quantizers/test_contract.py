"""The contract every quantizer shares (vqlib/quantizers/base.py)."""

import copy
import io

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqlib.quantizers import Quantizer, QuantizerOutput

from .conftest import CONFIGS, DIM, warm_up

shapes = st.lists(st.integers(1, 5), min_size=0, max_size=3)
hyp = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@hyp
@given(lead=shapes, scale=st.floats(0.01, 100.0), seed=st.integers(0, 2**16))
def test_decode_encode_equals_eval_forward(make_quantizer, lead, scale, seed):
    q = warm_up(make_quantizer()).eval()
    x = torch.randn(*lead, DIM, generator=torch.Generator().manual_seed(seed)) * scale
    out = q(x)
    assert isinstance(out, QuantizerOutput)
    assert out.quantized.shape == x.shape and out.quantized.dtype == x.dtype
    assert out.indices.dtype == torch.int64
    expected_idx_shape = tuple(lead) + ((q.num_codebooks,) if q.num_codebooks > 1 else ())
    assert tuple(out.indices.shape) == expected_idx_shape
    idx = q.encode(x)
    assert torch.equal(idx, out.indices)
    assert torch.equal(q.decode(idx), out.quantized)
    assert out.indices.min() >= 0 and out.indices.max() < q.codebook_size


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_forward_value_equals_decode(name):
    """A training step, in train mode: the estimators change gradients only, so the forward value is the code of
    each returned index in the codebook the search used (an EMA update moves the codebook after the search)."""
    torch.manual_seed(0)
    q = warm_up(CONFIGS[name]())
    assert q.training
    before = copy.deepcopy(q)
    # record the first codebook each (sub-)quantizer searched: wrappers (residual, grouped) hold several
    searched = {}
    quantizers = {name: m for name, m in q.named_modules() if hasattr(m, "_effective_codebook")}

    def recording(name, effective):
        def record():
            codebook = effective()
            searched.setdefault(name, codebook.detach().clone())
            return codebook

        return record

    for name, m in quantizers.items():
        m._effective_codebook = recording(name, m._effective_codebook)
    x = torch.randn(40, DIM, requires_grad=True)
    torch.manual_seed(1)
    out = q(x)
    for m in quantizers.values():
        del m._effective_codebook
    assert q.training

    # the codebooks the search used (the first ones computed; FSQ's grid is fixed and never searched):
    # under them the returned indices are the nearest codes, and the value is their codes
    frozen = copy.deepcopy(q).eval()
    for name, m in frozen.named_modules():
        if name in searched:
            m._effective_codebook = lambda c=searched[name]: c
    kept = out.indices >= 0  # quantize dropout (residual) marks the stages it dropped in training with -1
    assert torch.equal(frozen.encode(x.detach())[kept], out.indices[kept])
    if kept.all():
        assert torch.equal(out.quantized, frozen.decode(out.indices))
    else:  # dropped stages are a suffix per example, and the value is the code of the kept prefix
        stages = kept.sum(-1)
        assert torch.equal(kept, torch.arange(kept.shape[-1]) < stages[..., None])
        for n in stages.unique().tolist():
            rows = stages == n
            assert torch.equal(out.quantized[rows], frozen.decode(out.indices[rows][..., :n]))

    # the same step without autograd gives the same value, indices, loss and state: only gradients differ
    twin = copy.deepcopy(before)
    torch.manual_seed(1)
    with torch.no_grad():
        plain = twin(x.detach())
    assert torch.equal(plain.quantized, out.quantized) and torch.equal(plain.indices, out.indices)
    assert torch.equal(plain.loss, out.loss.detach())
    state, twin_state = q.state_dict(), twin.state_dict()
    assert all(torch.equal(state[k], twin_state[k]) for k in state)

    # what a training step must do: pass gradient to the input, count usage, move an EMA codebook
    (out.quantized * torch.randn_like(out.quantized)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert q.usage(sync=False).total == before.usage(sync=False).total + int(kept.sum())  # dropped stages uncounted
    if getattr(q, "codebook_update", None) == "ema":
        assert not torch.equal(q.embed, before.embed), "an EMA training step must update the codebook"
        assert int(q.steps) == int(before.steps) + 1


def test_encoder_gets_gradient_and_loss_reaches_only_codebook(make_quantizer):
    q = warm_up(make_quantizer())
    x = torch.randn(50, DIM, requires_grad=True)
    out = q(x)
    (out.quantized * torch.randn_like(out.quantized)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0, "straight-through gradient must reach the input"

    # the quantizer's own loss: its codebook term must not flow into the quantized output path
    q.zero_grad()
    x2 = torch.randn(50, DIM, requires_grad=True)
    out = q(x2)
    if not out.loss.requires_grad:
        assert float(out.loss) == 0.0  # FSQ has no loss
        return
    out.loss.backward()
    grads = {n: p.grad for n, p in q.named_parameters()}
    codebook_params = [n for n in grads if not n.startswith(("project_in", "project_out"))]
    assert all(grads[n] is None or grads[n].abs().sum() == 0 for n in grads if n.startswith("project_out")), (
        "the quantizer loss must not reach the output projection"
    )
    if codebook_params:
        assert any(grads[n] is not None and grads[n].abs().sum() > 0 for n in codebook_params), (
            "the codebook term must train the codebook parameters"
        )


def test_state_dict_round_trip(make_quantizer):
    q = warm_up(make_quantizer()).eval()
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)  # a different random start
    fresh = make_quantizer_like(q)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    fresh.eval()
    x = torch.randn(30, DIM)
    assert torch.equal(fresh(x).quantized, q(x).quantized)
    assert torch.equal(fresh.encode(x), q.encode(x))


def make_quantizer_like(q: Quantizer) -> Quantizer:
    for factory in CONFIGS.values():
        torch.manual_seed(999)
        other = factory()
        if other.config == q.config:
            return other
    raise AssertionError("no config matches")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(make_quantizer, dtype):
    q = warm_up(make_quantizer())
    x = torch.randn(20, DIM, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        out = q(x)
        assert out.quantized.dtype == torch.float32  # the input's dtype
        (out.quantized.float().sum() + out.loss).backward()
    assert torch.isfinite(x.grad).all()
    xl = torch.randn(20, DIM).to(dtype)
    q.eval()
    with torch.autocast("cpu", dtype=dtype):
        out = q(xl)
        assert out.quantized.dtype == dtype
        assert torch.equal(q.decode(q.encode(xl)), out.quantized)


def test_low_precision_input_without_autocast(make_quantizer):
    q = warm_up(make_quantizer()).eval()
    x = torch.randn(10, DIM).to(torch.bfloat16)
    out = q(x)
    assert out.quantized.dtype == torch.bfloat16
    assert torch.equal(q.encode(x), q.encode(x.float()))


def test_channel_first_matches_channel_last():
    for name, factory in CONFIGS.items():
        torch.manual_seed(0)
        last = warm_up(factory()).eval()
        first = factory()
        first.load_state_dict(last.state_dict())
        first.channel_first = True
        first.eval()
        x = torch.randn(2, DIM, 3, 5)
        out = first(x)
        ref = last(x.movedim(1, -1))
        assert out.quantized.shape == x.shape, name
        assert torch.equal(out.quantized, ref.quantized.movedim(-1, 1)), name
        assert torch.equal(out.indices, ref.indices), name
        assert torch.equal(first.decode(out.indices), out.quantized), name


def test_usage_accounting(make_quantizer):
    q = warm_up(make_quantizer()).eval()
    q.reset_usage()
    assert q.usage().total == 0
    x = torch.randn(100, DIM)
    idx = q(x).indices.reshape(-1, q.num_codebooks)
    u = q.usage()
    assert u.total == idx.numel()
    distinct = sum(len(torch.unique(idx[:, g])) for g in range(q.num_codebooks))
    assert u.used == pytest.approx(distinct / (q.codebook_size * q.num_codebooks))
    assert u.dead == q.codebook_size * q.num_codebooks - distinct
    assert 1.0 <= u.perplexity <= min(100, q.codebook_size) + 1e-6
    q(x)
    assert q.usage().total == 2 * idx.numel()


def test_bits_and_codebook(make_quantizer):
    q = make_quantizer()
    assert q.bits_per_index == pytest.approx(q.num_codebooks * torch.log2(torch.tensor(float(q.codebook_size))).item())
    cb = q.codebook
    assert cb.shape == (q.codebook_size, q.codebook_dim)
    assert not cb.requires_grad
    # decoding every index gives the codebook through the output projection
    q.eval()
    if q.num_codebooks == 1:
        all_idx = torch.arange(q.codebook_size)
        assert torch.allclose(q.decode(all_idx), q.project_out(cb).detach(), atol=1e-6)


def test_bad_inputs(make_quantizer):
    q = make_quantizer()
    with pytest.raises(ValueError, match=f"expected last dim {DIM}, got {DIM + 1}"):
        q(torch.randn(4, DIM + 1))
    with pytest.raises(ValueError, match="floating-point"):
        q(torch.ones(4, DIM, dtype=torch.long))
    bad = torch.randn(4, DIM)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        q(bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        q.encode(bad.clone().fill_(float("inf")))
    shape = (3, q.num_codebooks) if q.num_codebooks > 1 else (3,)
    with pytest.raises(ValueError, match=r"indices must be in \[0, "):
        q.decode(torch.full(shape, q.codebook_size))
    with pytest.raises(ValueError, match=r"indices must be in \[0, "):
        q.decode(torch.full(shape, -1))
    with pytest.raises(ValueError, match="integer tensor"):
        q.decode(torch.zeros(shape))
    # the failed calls changed nothing
    assert q.usage().total == 0
    q.check_finite = False
    q.eval()
    q(bad)  # the check can be skipped on hot paths


def test_empty_batch(make_quantizer):
    q = make_quantizer()
    state = {k: v.clone() for k, v in q.state_dict().items()}
    out = q(torch.randn(0, DIM))
    assert out.quantized.shape == (0, DIM) and out.indices.shape[0] == 0
    assert float(out.loss.detach()) == 0.0
    for name, value in q.state_dict().items():
        assert torch.equal(value, state[name]), f"an empty batch changed {name}"


def test_config_round_trip_is_json(make_quantizer):
    import json

    q = warm_up(make_quantizer()).eval()
    config = json.loads(json.dumps(q.config))
    rebuilt = Quantizer.from_config(config)
    assert type(rebuilt) is type(q) and rebuilt.config == q.config
    rebuilt.load_state_dict(q.state_dict())
    rebuilt.eval()
    x = torch.randn(9, DIM)
    assert torch.equal(rebuilt(x).quantized, q(x).quantized)


def test_from_config_errors():
    with pytest.raises(ValueError, match="unknown quantizer"):
        Quantizer.from_config({"class_path": "NoSuchQuantizer", "init_args": {}})
    with pytest.raises(ValueError, match="not a vqlib Quantizer"):
        Quantizer.from_config({"class_path": "torch.nn.Linear", "init_args": {}})
    with pytest.raises(ValueError, match="class_path"):
        Quantizer.from_config("VectorQuantizer")


def test_output_never_trains_the_codebook(make_quantizer):
    """Only ``loss`` reaches codebook parameters, whether or not the input requires grad."""
    q = warm_up(make_quantizer())
    for requires_grad in (False, True):
        q.zero_grad()
        x = torch.randn(20, DIM, requires_grad=requires_grad)
        out = q(x)
        if out.quantized.requires_grad:
            out.quantized.square().sum().backward()
        for name, p in q.named_parameters():
            if not name.startswith(("project_in", "project_out")):
                assert p.grad is None or p.grad.abs().sum() == 0, f"{name} got gradient from the output"

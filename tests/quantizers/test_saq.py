import itertools
import math

import pytest
import torch

from vqlib.quantizers import CodesMismatchError, NotFittedError
from vqlib.quantizers.saq import (
    CAQ,
    DROP_BITS,
    FACTOR_BITS,
    SAQ,
    SAQCodes,
    Segment,
    caq_codes,
    caq_inner_products,
    caq_reconstruct,
    plan_code_size,
    plan_segments,
)


def decaying(n, dim=64, decay=12.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    var = torch.exp(-torch.arange(dim) / decay)
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=g))[0]
    return (torch.randn(n, dim, generator=g) * var.sqrt()) @ basis.T + 0.3


def ob1(codes, bits):
    return (2.0 / (1 << bits)) * (codes.double() + 0.5) - 1


def cos(a, b):
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


@pytest.mark.parametrize("bits", [1, 2, 4, 7])
def test_caq_codes_formula_and_adjustment(bits):
    o = torch.randn(300, 24, generator=torch.Generator().manual_seed(bits)).double()
    plain, n2, r = caq_codes(o, bits, rounds=0)
    v = o.abs().amax(1, keepdim=True)
    delta = 2 * v / (1 << bits)
    torch.testing.assert_close(plain.long(), torch.floor((o + v) / delta).clamp(0, (1 << bits) - 1).long())
    torch.testing.assert_close(n2.double(), o.square().sum(1), rtol=1e-6, atol=0)
    torch.testing.assert_close(r.double(), o.square().sum(1) / (ob1(plain, bits) * o).sum(1), rtol=1e-5, atol=0)
    adjusted, _, _ = caq_codes(o, bits, rounds=6)
    assert adjusted.min() >= 0 and adjusted.max() < 1 << bits
    # code adjustment only ever raises cos(ō, o), and does raise it on average
    # (at 1 bit the sign code already maximises the cosine, so nothing moves)
    c0, c1 = cos(ob1(plain, bits), o), cos(ob1(adjusted, bits), o)
    assert (c1 >= c0 - 1e-12).all()
    if bits == 1:
        assert torch.equal(adjusted, plain)
    else:
        assert (1 - c1).mean() < 0.97 * (1 - c0).mean()


def test_caq_estimator_from_integer_codes_is_exact():
    g = torch.Generator().manual_seed(1)
    o, q = torch.randn(50, 16, generator=g), torch.randn(7, 16, generator=g)
    codes, n2, r = caq_codes(o, 3)
    ref = (q.double() @ ob1(codes, 3).T) * r.double()[None]  # ⟨ō₁, q⟩ · ‖o‖² / ⟨ō₁, o⟩
    torch.testing.assert_close(caq_inner_products(q, codes, r, 3).double(), ref, rtol=1e-4, atol=1e-4)
    # reconstruction is ō₁ scaled to the MSE-optimal length
    rec = caq_reconstruct(codes, n2, r, 3).double()
    torch.testing.assert_close((rec * o.double()).sum(1), rec.square().sum(1), rtol=1e-4, atol=1e-5)


def test_zero_vectors():
    codes, n2, r = caq_codes(torch.zeros(3, 8), 4)
    assert (n2 == 0).all() and (r == 0).all()
    assert (caq_reconstruct(codes, n2, r, 4) == 0).all()


def plan_cost(plan):
    return sum(b * n + FACTOR_BITS if b else DROP_BITS for n, b in plan)


def plan_error(plan, var):
    err, start = 0.0, 0
    for n, b in plan:
        err += sum(var[start : start + n]) / 2.0**b
        start += n
    return err


def test_flat_spectrum_gives_single_segment_caq():
    for bits in (1, 2, 4, 8):
        assert plan_segments([1.0] * 128, bits, 16) == [(128, bits)]


def test_plan_is_optimal_against_brute_force():
    var = [math.exp(-i / 3) for i in range(40)]
    g, bits = 8, 2.5
    budget = bits * 40 + FACTOR_BITS
    best = None
    cuts = range(8, 40, 8)
    for k in range(len(cuts) + 1):
        for chosen in itertools.combinations(cuts, k):
            bounds = [0, *chosen, 40]
            lengths = [bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)]
            for widths in itertools.product(range(0, 9), repeat=len(lengths)):
                if 0 in widths[:-1]:
                    continue  # only the tail may be dropped
                plan = list(zip(lengths, widths))
                if plan_cost(plan) <= budget:
                    e = plan_error(plan, var)
                    if best is None or e < best - 1e-12:
                        best = e
    plan = plan_segments(var, bits, g, max_bits=8)
    assert plan_cost(plan) <= budget and sum(n for n, _ in plan) == 40
    assert plan_error(plan, var) <= best * (1 + 1e-3) + 1e-12


def test_plan_prefers_fewer_segments_within_tolerance():
    var = [1.0] * 32 + [0.999] * 32
    assert plan_segments(var, 4, 16) == [(64, 4)]


@pytest.fixture(scope="module")
def data():
    x = decaying(3000)
    return x[:2500], x[2500:2540]


def test_saq_round_trip_sizes_and_accuracy(data):
    base, q = data
    saq = SAQ(64, 4).fit(base)
    codes = saq.encode(base)
    assert codes.nbytes == saq.code_size * len(base)
    assert saq.code_size * 8 <= 4 * 64 + FACTOR_BITS + 8 * len(saq.plan)  # plan budget, up to byte rounding per segment
    true = torch.cdist(q.double(), base.double()).square()
    est = saq.estimate_sq_distances(q, codes).double()
    assert ((est - true).abs() / true).mean() < 0.02
    rec = saq.decode(codes)
    assert rec.shape == base.shape
    assert (rec - base).square().sum(1).mean() < 0.05 * (base - base.mean(0)).square().sum(1).mean()
    # inner products in the centred space agree with the distance estimate
    ip = saq.estimate_inner_products(q, codes)
    qo = saq.transform(q)
    torch.testing.assert_close(est.float(), (qo.square().sum(1, keepdim=True) + saq.norms2(codes)[None] - 2 * ip).clamp_min(0))


def test_saq_beats_caq_at_equal_bytes_on_a_decaying_spectrum(data):
    base, q = data
    true = torch.cdist(q.double(), base.double()).square()
    errors = {}
    for name, codec in (("caq", CAQ(64, 2)), ("saq", SAQ(64, 2))):
        codec.fit(base)
        codes = codec.encode(base)
        errors[name] = ((codec.estimate_sq_distances(q, codes).double() - true).abs() / true).mean().item()
        errors[name + "_bytes"] = codec.code_size
    assert errors["saq_bytes"] <= errors["caq_bytes"]
    assert errors["saq"] < 0.8 * errors["caq"]


def test_more_bits_lower_error_and_progressive_codes(data):
    base, q = data
    true = torch.cdist(q.double(), base.double()).square()
    caq = CAQ(64, 6).fit(base)
    codes = caq.encode(base)
    errs = [((caq.estimate_sq_distances(q, codes, code_bits=b).double() - true).abs() / true).mean() for b in (2, 4, 6)]
    assert errs[0] > errs[1] > errs[2]
    # the top 2 bits of a 6-bit code estimate about as well as a 2-bit code
    direct = CAQ(64, 2).fit(base)
    e2 = ((direct.estimate_sq_distances(q, direct.encode(base)).double() - true).abs() / true).mean()
    assert errs[0] < 2 * e2


def test_fractional_bits(data):
    base, _ = data
    saq = SAQ(64, 0.5).fit(base)
    assert saq.code_size * 8 <= 0.5 * 64 + FACTOR_BITS + 8 * len(saq.plan)
    assert any(b == 0 for _, b in saq.plan)  # low-variance dimensions are dropped
    assert saq.decode(saq.encode(base[:10])).shape == (10, 64)


def test_state_dict_round_trip(data):
    base, q = data
    saq = SAQ(64, 3, seed=5).fit(base)
    clone = SAQ(64, 3)
    clone.load_state_dict(saq.state_dict())
    assert clone.plan == saq.plan
    a, b = saq.encode(base[:100]), clone.encode(base[:100])
    assert all(torch.equal(x, y) for x, y in zip(a.packed, b.packed)) and torch.equal(a.factors, b.factors)
    torch.testing.assert_close(clone.estimate_sq_distances(q, b), saq.estimate_sq_distances(q, a))


def test_codes_select_and_cat(data):
    base, _ = data
    saq = SAQ(64, 2).fit(base)
    codes = saq.encode(base[:20])
    joined = type(codes).cat([codes[:5], codes[5:]])
    torch.testing.assert_close(saq.decode(joined), saq.decode(codes))
    torch.testing.assert_close(saq.decode(codes[[3, 1]]), saq.decode(codes)[[3, 1]])


def test_bad_input(data):
    base, _ = data
    with pytest.raises(ValueError, match=r"bits must be in \(0, 16\]"):
        SAQ(64, 0)
    with pytest.raises(ValueError, match=r"bits must be in \(0, 16\]"):
        SAQ(64, 17)
    with pytest.raises(ValueError, match="CAQ bits must be an integer"):
        CAQ(64, 2.5)
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        SAQ(0, 4)
    saq = SAQ(64, 4)
    with pytest.raises(NotFittedError, match=r"SAQ is not fitted: call fit\(x\) first"):
        saq.encode(base)
    with pytest.raises(ValueError, match=r"expected shape \(n, 64\), got \(10, 32\)"):
        saq.fit(base[:10, :32])
    with pytest.raises(ValueError, match="at least 2 training vectors"):
        saq.fit(base[:1])
    bad = base[:10].clone()
    bad[3, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        saq.fit(bad)
    saq.fit(base)
    with pytest.raises(ValueError, match="NaN or Inf"):
        saq.encode(bad)
    with pytest.raises(ValueError, match="queries"):
        saq.estimate_sq_distances(base[:2, :10], saq.encode(base[:3]))
    other = SAQ(64, 1).fit(base)
    with pytest.raises(CodesMismatchError, match="not produced by this SAQ"):
        saq.decode(other.encode(base[:3]))


# ---- the codec contract and the public seams ---------------------------------------------

FOUR_SEGMENTS = [(16, 6), (16, 5), (16, 4), (16, 3)]


def same_codes(a, b):
    return a.n == b.n and len(a.packed) == len(b.packed) and torch.equal(a.factors, b.factors) and all(
        torch.equal(x, y) for x, y in zip(a.packed, b.packed)
    )


def test_segments_describe_the_plan_and_the_codes(data):
    base, _ = data
    saq = SAQ(64, 0.5).fit(base)  # a plan with a dropped tail
    segs = saq.segments()
    assert all(isinstance(s, Segment) for s in segs)
    assert [(s.length, s.bits) for s in segs] == saq.plan
    assert segs[0].start == 0 and segs[-1].stop == 64
    assert all(a.stop == b.start for a, b in zip(segs, segs[1:]))
    coded = [s for s in segs if s.coded]
    assert [s.code for s in coded] == list(range(len(coded)))
    assert not segs[-1].coded and segs[-1].rotation is None and segs[-1].code is None
    codes = saq.encode(base[:50])
    # every factor column belongs to exactly one segment
    columns = sorted(c for s in segs for c in s.factors)
    assert columns == list(range(codes.factors.shape[1]))
    # the dropped tail's factor is its squared norm in the PCA space
    o = saq.transform(base[:50])
    torch.testing.assert_close(codes.factors[:, segs[-1].factors[0]], o[:, segs[-1].start :].square().sum(1))
    for s in coded:
        torch.testing.assert_close(codes.factors[:, s.factors[0]], o[:, s.start : s.stop].square().sum(1))
        torch.testing.assert_close(s.rotation @ s.rotation.T, torch.eye(s.length), atol=1e-5, rtol=0)
    torch.testing.assert_close(sum(s.variance for s in segs), float(saq.variances.sum()), rtol=1e-5, atol=0)


def test_unpack_rebuilds_decode(data):
    base, _ = data
    saq = SAQ(64, 3).fit(base)
    codes = saq.encode(base[:40])
    parts = saq.unpack(codes)
    assert [s.code for s, _ in parts] == list(range(len(codes.packed)))
    o = torch.zeros(40, 64)
    for s, c in parts:
        assert c.shape == (40, s.length) and c.dtype == torch.int64 and 0 <= c.min() and c.max() < 1 << s.bits
        rec = caq_reconstruct(c, codes.factors[:, s.factors[0]], codes.factors[:, s.factors[1]], s.bits)
        o[:, s.start : s.stop] = rec @ s.rotation.T
    torch.testing.assert_close(o @ saq.basis.T + saq.mean, saq.decode(codes))


def test_check_codes_names_what_differs(data):
    base, _ = data
    saq = SAQ(64, 4, plan=FOUR_SEGMENTS).fit(base)
    codes = saq.encode(base[:5])
    saq.check_codes(codes)  # its own codes pass
    with pytest.raises(CodesMismatchError, match="SAQ .*3 coded segments, this plan has 4"):
        saq.check_codes(SAQCodes(codes.packed[:3], codes.factors, 5))
    with pytest.raises(CodesMismatchError, match=r"factors of shape \(5, 7\), expected \(5, 8\)"):
        saq.check_codes(SAQCodes(codes.packed, codes.factors[:, :7], 5))
    with pytest.raises(CodesMismatchError, match="segment 1 holds"):
        saq.check_codes(SAQCodes([codes.packed[0], codes.packed[0], *codes.packed[2:]], codes.factors, 5))
    with pytest.raises(CodesMismatchError, match="expected SAQCodes"):
        saq.check_codes(torch.zeros(5, 3))
    caq = CAQ(64, 4).fit(base)
    with pytest.raises(CodesMismatchError, match="not produced by this CAQ"):
        caq.unpack(codes)


def test_plan_argument_replaces_the_dynamic_programme(data):
    base, q = data
    saq = SAQ(64, 4, plan=FOUR_SEGMENTS).fit(base)
    assert saq.plan == FOUR_SEGMENTS != SAQ(64, 4).fit(base).plan
    assert saq.code_size == plan_code_size(FOUR_SEGMENTS)
    true = torch.cdist(q.double(), base.double()).square()
    est = saq.estimate_sq_distances(q, saq.encode(base)).double()
    assert ((est - true).abs() / true).mean() < 0.05
    tail = SAQ(64, 2, plan=[(48, 3), (16, 0)]).fit(base)
    assert [s.bits for s in tail.segments()] == [3, 0]


@pytest.mark.parametrize(
    "plan, match",
    [
        ([(32, 4)], "sum to 32, expected dim=64"),
        ([(32, 0), (32, 4)], "only the last segment"),
        ([(64, 17)], r"bits must be in \[0, 16\]"),
        ([(64, 2.5)], "bits must be an integer"),
        ([(0, 4), (64, 4)], "length must be positive"),
        ([], "plan is empty"),
        ("64x4", "list of"),
        ([(64,)], "pair"),
    ],
)
def test_bad_plans(plan, match):
    with pytest.raises(ValueError, match=match):
        SAQ(64, 4, plan=plan)


def test_caq_is_saq_with_a_one_segment_plan(data):
    base, q = data
    caq = CAQ(64, 3, seed=2).fit(base)
    saq = SAQ(64, 3, granularity=64, seed=2, plan=[(64, 3)]).fit(base)
    assert isinstance(caq, SAQ) and caq.plan == [(64, 3)] and len(caq.segments()) == 1
    assert [k for k, v in vars(CAQ).items() if callable(v) and not k.startswith("__")] == []  # no overrides
    assert same_codes(caq.encode(base[:100]), saq.encode(base[:100]))
    assert caq.code_dim == 64 and caq.bits_per_dim == 8 * caq.code_size / 64


def test_unfitted_use_raises_not_fitted(data):
    base, _ = data
    saq = SAQ(64, 4)
    assert not saq.is_fitted and not saq.is_trained
    for call in (lambda: saq.code_size, saq.segments, lambda: saq.decode(None), lambda: saq.check_codes(None)):
        with pytest.raises(NotFittedError, match="call fit"):
            call()
    assert saq.fit(base) is saq and saq.is_fitted and saq.is_trained


@pytest.mark.parametrize(
    "make",
    [lambda: SAQ(64, 3, seed=5), lambda: SAQ(64, 0.5), lambda: CAQ(64, 4, seed=3), lambda: SAQ(64, 4, plan=FOUR_SEGMENTS)],
    ids=["saq", "saq-dropped-tail", "caq", "saq-plan"],
)
def test_save_pretrained_round_trip(data, tmp_path, make):
    base, q = data
    saq = make().fit(base)
    saq.save_pretrained(tmp_path / "codec")
    loaded = type(saq).from_pretrained(tmp_path / "codec")
    assert type(loaded) is type(saq) and loaded.config == saq.config and loaded.plan == saq.plan
    a, b = saq.encode(base[:200]), loaded.encode(base[:200])
    assert same_codes(a, b)
    assert torch.equal(loaded.decode(a), saq.decode(a))
    assert torch.equal(loaded.estimate_sq_distances(q, a), saq.estimate_sq_distances(q, a))
    unfitted = make()
    unfitted.save_pretrained(tmp_path / "unfitted")
    assert not type(saq).from_pretrained(tmp_path / "unfitted").is_fitted

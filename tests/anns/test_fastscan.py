"""Compiled fast scan: equal to the torch estimate of the same codes, every instruction set equal, pruning safe."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from vqlib.anns import fastscan
from vqlib.quantizers import SAQ, kmeans, nearest
from vqlib.quantizers.saq import caq_inner_products

pytest.importorskip("numba", reason="the compiled fast scan needs numba (pip install 'vqlib[anns]')")

ROOT = Path(__file__).resolve().parents[2]
SIMDS = ["portable"] + {"avx512": ["avx2", "avx512"], "avx2": ["avx2"]}.get(fastscan.default_simd(), [])


def spectrum_data(n, nq, d, decay, seed=0, clusters=16):
    """Clustered Gaussians, variances ``exp(−i·decay/d)`` (enough spread for SAQ plans of several coded segments)."""
    rng = np.random.default_rng(seed)
    s = np.exp(-np.arange(d) * decay / (2 * d))
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    centres = rng.standard_normal((clusters, d)) * s * 2
    x = centres[rng.integers(0, clusters, n + nq)] + rng.standard_normal((n + nq, d)) * s
    x = torch.from_numpy((x @ basis.T).astype(np.float32))
    return x[:n], x[n:]


class Setup:
    """SAQ codes of residuals in inverted lists, and the plain arrays fastscan.search takes."""

    def __init__(self, xb, xq, nlist, bits, granularity=None, empty_lists=0, stage_bits=2):
        d = xb.shape[1]
        g = torch.Generator().manual_seed(0)
        cents, assign, _ = kmeans(xb, nlist, iters=5, generator=g)
        if empty_lists:  # lists far away that hold nothing (probed explicitly below)
            cents = torch.cat([cents, torch.full((empty_lists, d), 1e4)])
        self.saq = SAQ(d, bits, granularity=granularity).fit(xb - cents[assign])
        order = torch.argsort(assign, stable=True)
        self.assign = assign[order]
        self.codes = self.saq.encode(xb[order] - cents[self.assign])
        self.offsets = torch.zeros(len(cents) + 1, dtype=torch.int64)
        self.offsets[1:] = torch.cumsum(torch.bincount(self.assign, minlength=len(cents)), 0)
        self.xq, self.cents = xq, cents
        parts = self.saq.unpack(self.codes)
        self.segs = [s for s, _ in parts]
        self.unpacked = [c for _, c in parts]
        self.tail = torch.ones(d, dtype=torch.bool)
        for seg in self.segs:
            self.tail[seg.start : seg.stop] = False
        rescale = self.codes.factors[:, [seg.factors[1] for seg in self.segs]]
        self.cseg = fastscan.pad_segments([(cents @ self.saq.basis)[:, s.start : s.stop] @ s.rotation for s in self.segs])
        self.layout = fastscan.build_layout([(seg.length, seg.bits) for seg in self.segs], self.unpacked, rescale,
                                            self.saq.norms2(self.codes), self.offsets,
                                            self.codes.factors[:, [seg.factors[0] for seg in self.segs]],
                                            self.cseg, stage_bits=stage_bits)  # fmt: skip

    def probe(self, nprobe, metric):
        return nearest(self.xq, self.cents, k=nprobe, metric=metric)[1]

    def search(self, probe, k, bound_m, metric, **kw):
        ip = metric == "ip"
        qo = (self.xq if ip else self.xq - self.saq.mean) @ self.saq.basis
        co = self.cents @ self.saq.basis
        qseg = fastscan.pad_segments([qo[:, s.start : s.stop] @ s.rotation for s in self.segs])
        cseg = fastscan.pad_segments([co[:, s.start : s.stop] @ s.rotation for s in self.segs])
        qc = (self.xq @ self.cents.T + (self.xq @ self.saq.mean)[:, None]).gather(1, probe.clamp(0, len(self.cents) - 1))
        return fastscan.search(qseg, cseg, qo[:, self.tail], co[:, self.tail], qc, probe, self.layout, k, bound_m,
                               metric, **kw)  # fmt: skip

    def reference(self, probe, k, metric):
        """Torch: every code of the probed lists estimated with caq_inner_products, then top-k."""
        ip = metric == "ip"
        qo = (self.xq if ip else self.xq - self.saq.mean) @ self.saq.basis
        co = self.cents @ self.saq.basis
        n = self.codes.n
        scores = torch.full((len(qo), n), float("inf"))
        for qi in range(len(qo)):
            for l in probe[qi].tolist():
                a, b = int(self.offsets[l]), int(self.offsets[l + 1])
                if l < 0 or a == b:
                    continue
                u = qo[qi] if ip else qo[qi] - co[l]
                acc = torch.zeros(b - a)
                for seg, c in zip(self.segs, self.unpacked):
                    rescale = self.codes.factors[a:b, seg.factors[1]]
                    uq = (u[seg.start : seg.stop] @ seg.rotation)[None]
                    acc += caq_inner_products(uq, c[a:b], rescale, seg.bits)[0]
                if ip:
                    scores[qi, a:b] = -(self.xq[qi] @ (self.cents[l] + self.saq.mean)) - acc
                else:
                    scores[qi, a:b] = u.square().sum() + self.saq.norms2(self.codes)[a:b] - 2 * acc
        kk = min(k, n)
        d, pos = scores.topk(kk, dim=1, largest=False)
        pos[torch.isinf(d)] = -1
        pad = k - kk
        return (torch.nn.functional.pad(d, (0, pad), value=float("inf")).numpy(),
                torch.nn.functional.pad(pos, (0, pad), value=-1).numpy())  # fmt: skip


def assert_same_topk(d, p, rd, rp):
    """Same positions as the reference (ties at float precision may swap), distances to float tolerance."""
    np.testing.assert_array_equal(np.isfinite(d), np.isfinite(rd))
    fin = np.isfinite(rd)
    scale = float(np.abs(rd[fin]).max()) if fin.any() else 1.0
    np.testing.assert_allclose(d[fin], rd[fin], rtol=1e-4, atol=1e-5 * scale)
    for row in range(len(p)):
        mine, ref = set(p[row][p[row] >= 0].tolist()), set(rp[row][rp[row] >= 0].tolist())
        if mine != ref:  # only a tie with the k-th distance may differ
            kth = rd[row][np.isfinite(rd[row])].max()
            assert abs(d[row][np.isfinite(d[row])].max() - kth) <= 1e-4 * abs(kth) + 1e-5 * scale, row


PLANS = {
    "caq-4bit": dict(d=64, bits=4, granularity=64, decay=4.0),  # one coded segment
    "saq-3seg": dict(d=100, bits=5.0, granularity=10, decay=12.0),  # [(20, 11), (30, 6), (50, 0)]: odd lengths, >8 bits
    "saq-1bit": dict(d=40, bits=1, granularity=40, decay=1.0),
    "saq-3seg-stage1": dict(d=100, bits=5.0, granularity=10, decay=12.0, stage_bits=1),  # first stage: top bit only
}


@pytest.fixture(scope="module", params=list(PLANS))
def setup(request):
    torch.set_num_threads(1)
    p = PLANS[request.param]
    xb, xq = spectrum_data(1500, 40, p["d"], p["decay"], seed=1)
    s = Setup(xb, xq, nlist=7, bits=p["bits"], granularity=p["granularity"], empty_lists=2,
              stage_bits=p.get("stage_bits", 2))
    if request.param.startswith("saq-3seg"):
        assert sum(1 for _, b in s.saq.plan if b > 0) >= 2, s.saq.plan
    return s


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("bound_m", [0.0, 4.0])
def test_equals_torch_estimate_of_same_codes(setup, metric, bound_m):
    probe = setup.probe(3, metric)
    probe[:, -1] = len(setup.cents) - 1  # an empty list
    probe[::5, 0] = -1  # "no list"
    rd, rp = setup.reference(probe, 12, metric)
    results = {}
    for simd in SIMDS:
        d, p, stats = setup.search(probe, 12, bound_m, metric, simd=simd)
        assert_same_topk(d, p, rd, rp)
        results[simd] = (d, p, stats)
    for simd in SIMDS[1:]:  # same integer sums, same float order: identical output
        np.testing.assert_array_equal(results[simd][0], results["portable"][0])
        np.testing.assert_array_equal(results[simd][1], results["portable"][1])
        assert results[simd][2] == results["portable"][2]
    assert (results["portable"][2]["bounded"] > 0) == (bound_m > 0)


def test_k_larger_than_lists_pads(setup):
    probe = setup.probe(1, "l2")
    k = int(torch.diff(setup.offsets).max()) + 5
    d, p, _ = setup.search(probe, k, 4.0, "l2")
    rd, rp = setup.reference(probe, k, "l2")
    assert_same_topk(d, p, rd, rp)
    sizes = torch.diff(setup.offsets)[probe[:, 0]].numpy()
    np.testing.assert_array_equal((p >= 0).sum(1), sizes)
    assert np.isinf(d[p < 0]).all()


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_give_identical_results(setup, threads):
    probe = setup.probe(4, "l2")
    one = setup.search(probe, 10, 4.0, "l2", threads=1)
    many = setup.search(probe, 10, 4.0, "l2", threads=threads)
    for a, b in zip(one[:2], many[:2]):
        np.testing.assert_array_equal(a, b)


def test_bad_input_is_refused(setup):
    probe = setup.probe(2, "l2")
    with pytest.raises(ValueError, match="simd"):
        setup.search(probe, 5, 4.0, "l2", simd="neon")
    with pytest.raises(ValueError, match="bound_m"):
        setup.search(probe, 5, -1.0, "l2")
    with pytest.raises(ValueError, match="out of range"):
        setup.search(probe + 100, 5, 4.0, "l2")
    with pytest.raises(ValueError, match="stage_bits"):
        fastscan.build_layout([(16, 2)], [np.zeros((3, 16), np.int64)], np.ones((3, 1)), np.ones(3), [0, 3], stage_bits=3)
    with pytest.raises(ValueError, match="centroids"):  # an l2 layout is bound to its centroids
        fastscan.search(setup.cseg[:3], setup.cseg + 1, np.zeros((3, 0)), np.zeros((len(setup.cseg), 0)),
                        np.zeros((3, 1)), probe[:3, :1], setup.layout, 5, 4.0, "l2")  # fmt: skip


# ---- pruning is safe: the pruned scan keeps the full scan's top k ------------------------------------------------


def sift_descriptors():
    """SIFT descriptors of one bundled scikit-image picture, as benchmarks/datasets.py extracts them."""
    skimage = pytest.importorskip("skimage", reason="SIFT data needs scikit-image")
    from skimage.feature import SIFT
    from skimage.util import img_as_float

    sift = SIFT(upsampling=2, c_dog=0.01)
    sift.detect_and_extract(img_as_float(skimage.data.grass()))
    x = np.unique(np.asarray(sift.descriptors, dtype=np.float32), axis=0)
    x = x[np.random.default_rng(0).permutation(len(x))]
    return torch.from_numpy(x[1000:]), torch.from_numpy(x[:1000])


@pytest.mark.parametrize("data", ["sift", "minilm-like", "gaussian-3seg", "gaussian-caq2", "sift-1bit-stage"])
def test_pruned_scan_keeps_full_scan_topk(data):
    torch.set_num_threads(1)
    if data.startswith("sift"):
        xb, xq = sift_descriptors()
        s = Setup(xb, xq, nlist=16, bits=4, stage_bits=1 if data.endswith("1bit-stage") else 2)
    elif data == "minilm-like":  # unit-norm 384-d embeddings with a decaying spectrum, several coded segments
        xb, xq = spectrum_data(6000, 1000, 384, 6.0, seed=6)
        xb, xq = xb / xb.norm(dim=1, keepdim=True), xq / xq.norm(dim=1, keepdim=True)
        s = Setup(xb, xq, nlist=16, bits=3.5)
    elif data == "gaussian-3seg":
        xb, xq = spectrum_data(8000, 1000, 100, 12.0, seed=2)
        s = Setup(xb, xq, nlist=16, bits=5.0, granularity=10)
        assert sum(1 for _, b in s.saq.plan if b > 0) >= 2, s.saq.plan
    else:
        xb, xq = spectrum_data(8000, 1000, 64, 4.0, seed=3)
        s = Setup(xb, xq, nlist=16, bits=2, granularity=64)
    probe = s.probe(4, "l2")
    full_d, full_p, _ = s.search(probe, 10, 0.0, "l2")
    d, p, stats = s.search(probe, 10, 4.0, "l2")
    same = np.mean([set(a.tolist()) == set(b.tolist()) for a, b in zip(p, full_p)])
    assert same >= 0.999, (same, s.saq.plan)
    assert stats["exact"][0] < 0.5 * stats["bounded"]  # and it does prune


# ---- the compiled code is cached on disk -------------------------------------------------------------------------


def test_second_process_loads_compiled_kernels_from_disk(setup):
    setup.search(setup.probe(2, "l2"), 5, 4.0, "l2", simd="portable")  # compiled (or loaded) and cached here
    script = textwrap.dedent(
        """
        import numpy as np
        from vqlib.anns import _fastscan_kernels as K
        from vqlib.anns import fastscan

        lay = fastscan.build_layout([(16, 2)], [np.zeros((3, 16), np.int64)], np.ones((3, 1)), np.ones(3), [0, 3])
        z = np.zeros((1, 16), np.float32)
        d, p, _ = fastscan.search(z, z, z[:, :0], z[:, :0], np.zeros((1, 1)), np.zeros((1, 1), np.int64), lay, 2,
                                  4.0, "l2", simd="portable", threads=1)
        st = K.scan_portable.stats
        print(sum(st.cache_hits.values()), sum(st.cache_misses.values()), p.tolist())
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600, check=True)
    hits, misses, found = out.stdout.split(maxsplit=2)
    assert (int(hits), int(misses)) == (1, 0), out.stdout
    assert found.strip() == "[[0, 1]]"


# ---- IVFSAQIndex / SAQIndex search through the compiled scan ------------------------------------------------------


@pytest.mark.parametrize("kind", ["ivf", "flat", "ivf-refine"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_index_backends_agree(kind, metric):
    from vqlib.anns import IVFSAQIndex, RefineIndex, SAQIndex

    torch.set_num_threads(1)
    xb, xq = spectrum_data(2000, 50, 64, 4.0, seed=4)
    index = SAQIndex(64, 3, metric=metric) if kind == "flat" else IVFSAQIndex(64, 8, 3, metric=metric)
    scanned = index
    if kind == "ivf-refine":
        index = RefineIndex(index)
    index.train(xb)
    index.add(xb)
    params = {"bound_m": 0} if kind == "flat" else {"nprobe": 4, "bound_m": 0}
    out = {}
    for backend in ("torch", "numba"):
        scanned.backend = backend
        out[backend] = index.search(xq, 10, params)
        assert len(scanned.last_search_stats["pairs"]) >= 1
    np.testing.assert_allclose(out["numba"][0], out["torch"][0], rtol=1e-4, atol=1e-5 * float(np.abs(out["torch"][0]).max()))
    same = np.mean([set(a.tolist()) == set(b.tolist()) for a, b in zip(out["numba"][1], out["torch"][1])])
    assert same >= 0.98  # only float ties may swap
    scanned.backend = "auto"
    pruned = index.search(xq, 10, {k: v for k, v in params.items() if k != "bound_m"})[1]
    assert np.mean([set(a.tolist()) == set(b.tolist()) for a, b in zip(pruned, out["numba"][1])]) >= 0.98


def test_index_falls_back_to_torch_without_numba(monkeypatch):
    from vqlib.anns import IVFSAQIndex

    xb, xq = spectrum_data(1000, 20, 32, 4.0, seed=5)
    index = IVFSAQIndex(32, 4, 4)
    index.train(xb)
    index.add(xb)
    index.backend = "torch"
    ref = index.search(xq, 5, {"nprobe": 2})
    monkeypatch.setattr(fastscan, "available", lambda: False)
    index.backend = "auto"
    got = index.search(xq, 5, {"nprobe": 2})
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[0], ref[0])
    index.backend = "numba"
    with pytest.raises(ImportError, match="numba"):
        index.search(xq, 5)
    with pytest.raises(ValueError, match="backend"):
        index.backend = "cuda"
    assert index.backend == "numba"
    index.invlists.backend = "cuda"  # set behind the index's back: refused at search time
    with pytest.raises(ValueError, match="backend"):
        index.search(xq, 5)

"""index_factory strings, good and bad."""

import pytest

from vqlib.anns import FlatIndex, IVFSAQIndex, RefineIndex, SAQIndex, index_factory


@pytest.mark.parametrize(
    "description, cls, attrs, refined",
    [
        ("Flat", FlatIndex, {}, False),
        ("SAQ4", SAQIndex, {"bits": 4.0}, False),
        ("SAQ0.5", SAQIndex, {"bits": 0.5}, False),
        ("SAQ.5", SAQIndex, {"bits": 0.5}, False),
        ("SAQ2,Refine", SAQIndex, {"bits": 2.0}, True),
        ("IVF1024,SAQ4", IVFSAQIndex, {"nlist": 1024, "bits": 4.0}, False),
        ("IVF16,SAQ4.5,RFlat", IVFSAQIndex, {"nlist": 16, "bits": 4.5}, True),
    ],
)
def test_good_strings(description, cls, attrs, refined):
    index = index_factory(32, description, metric="ip")
    assert index.metric == "ip" and index.d == 32
    if refined:  # ",Refine" wraps the index it follows
        assert type(index) is RefineIndex and index.metric == index.base.metric
        index = index.base
    assert type(index) is cls and index.metric == "ip" and index.d == 32
    for k, v in attrs.items():
        assert getattr(index, k) == v


def test_kwargs_reach_the_constructor():
    assert index_factory(32, "IVF8,SAQ4", nprobe=5).nprobe == 5
    refined = index_factory(32, "IVF8,SAQ4,Refine", nprobe=5, k_factor=7)
    assert refined.k_factor == 7 and refined.base.nprobe == 5
    with pytest.raises(TypeError, match="k_factor"):
        index_factory(32, "IVF8,SAQ4", k_factor=7)  # no refinement, nothing takes k_factor


@pytest.mark.parametrize(
    "description",
    ["", "flat", "Flat,Refine", "SAQ", "SAQ-1", "SAQx4", "IVF,SAQ4", "IVF0,SAQ4", "IVF16", "IVF16,PQ8", "SAQ4,IVF16",
     "IVF16,SAQ4,Refine,Refine", " SAQ4", "SAQ4 ,Refine"],
)  # fmt: skip
def test_bad_strings(description):
    with pytest.raises(ValueError, match="cannot parse index description"):
        index_factory(32, description)


def test_bad_values():
    with pytest.raises(ValueError, match="bits"):
        index_factory(32, "SAQ17")
    with pytest.raises(ValueError, match="metric"):
        index_factory(32, "SAQ4", metric="cosine")
    with pytest.raises(ValueError, match="string"):
        index_factory(32, 4)

"""``index_factory(d, "IVF1024,SAQ4,Refine")``: FAISS-style strings that name an index.

Grammar (components separated by commas, no spaces)::

    Flat                       exact search                       → FlatIndex
    SAQ{bits}                  flat scan over SAQ codes           → SAQIndex
    IVF{nlist},SAQ{bits}       inverted lists of SAQ residuals    → IVFSAQIndex
    ...,Refine                 RefineIndex around the rest: keep float32 vectors, re-rank exactly
                               (also spelled RFlat, as in FAISS)

``bits`` is SAQ's average bits per dimension and may be fractional ("SAQ0.5", "SAQ4.5").
"""

from __future__ import annotations

import re

from .base import Index
from .flat import FlatIndex
from .ivf_saq import IVFSAQIndex
from .refine import RefineIndex
from .saq_index import SAQIndex

__all__ = ["index_factory"]

_SAQ = re.compile(r"SAQ(\d+(?:\.\d+)?|\.\d+)")
_IVF = re.compile(r"IVF([1-9]\d*)")


def index_factory(d: int, description: str, metric: str = "l2", **kwargs) -> Index:
    """Builds an untrained index from a factory string.

    ``kwargs`` go to the index constructor (e.g. ``nprobe``); with ``",Refine"``,
    ``k_factor`` goes to the :class:`RefineIndex` and the rest to the index it wraps.
    """
    if not isinstance(description, str):
        raise ValueError(f"factory description must be a string, got {type(description).__name__}")
    parts = description.split(",")
    refine = parts[-1] in ("Refine", "RFlat")
    if refine:
        parts = parts[:-1]
    refine_kwargs = {"k_factor": kwargs.pop("k_factor")} if refine and "k_factor" in kwargs else {}
    base = None
    if parts == ["Flat"] and not refine:
        base = FlatIndex(d, metric=metric, **kwargs)
    elif len(parts) == 1 and (m := _SAQ.fullmatch(parts[0])):
        base = SAQIndex(d, float(m[1]), metric=metric, **kwargs)
    elif len(parts) == 2 and (ivf := _IVF.fullmatch(parts[0])) and (m := _SAQ.fullmatch(parts[1])):
        base = IVFSAQIndex(d, int(ivf[1]), float(m[1]), metric=metric, **kwargs)
    if base is not None:
        return RefineIndex(base, **refine_kwargs) if refine else base
    raise ValueError(
        f"cannot parse index description {description!r}; expected 'Flat', 'SAQ{{bits}}' or "
        "'IVF{nlist},SAQ{bits}', optionally followed by ',Refine' (e.g. 'IVF1024,SAQ4,Refine')"
    )

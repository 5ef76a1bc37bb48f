"""The codec contract: ``fit`` / ``encode`` / ``decode`` / ``code_size``.

The second of vqlib's two small contracts (the first is :class:`Quantizer`):
vector and weight codecs (SAQ/CAQ, PyramidVQ, the LR²VQ weight codec,
``VQLinear``'s format) offer FAISS's standalone-codec surface (``sa_encode``,
``sa_decode``, ``sa_code_size``) under PyTorch names:

* ``fit(x) -> self``; ``is_fitted``;
* ``encode(x) -> codes`` and ``decode(codes) -> x̂``;
* ``code_size``: bytes per encoded item, every stored byte counted (packed
  codes, factors, norms; codebooks and scales amortised where a codec
  stores them once); ``code_dim``: the values one item holds;
* ``bits_per_dim`` = ``bits_per_weight`` = ``8 * code_size / code_dim``,
  computed here, never restated.

The same mistake raises the same error everywhere: :class:`NotFittedError`
("… is not fitted: call fit(x) first") and :class:`CodesMismatchError` for
codes made by another codec (naming the codec and what differs).
"""

from __future__ import annotations

from .config import ConfigMixin

__all__ = ["Codec", "CodesMismatchError", "NotFittedError"]


class NotFittedError(RuntimeError):
    """A codec (or index) used before ``fit``/``train``."""


class CodesMismatchError(ValueError):
    """Codes that another codec (or another configuration) produced."""


class Codec(ConfigMixin):
    """Mixin for vector and weight codecs; subclasses define ``is_fitted``, ``code_size``, ``code_dim``."""

    @property
    def is_fitted(self) -> bool:
        raise NotImplementedError

    @property
    def code_size(self) -> int | float:
        raise NotImplementedError

    @property
    def code_dim(self) -> int:
        raise NotImplementedError

    @property
    def bits_per_dim(self) -> float:
        """Stored bits per value: ``8 * code_size / code_dim``."""
        return 8 * self.code_size / self.code_dim

    @property
    def bits_per_weight(self) -> float:
        """The same number under the name weight codecs use."""
        return self.bits_per_dim

    def require_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(x) first")

    def codes_mismatch(self, what: str) -> CodesMismatchError:
        """The error for codes this codec did not make: ``raise self.codes_mismatch("plan differs: ...")``."""
        return CodesMismatchError(f"codes were not produced by this {type(self).__name__} ({what})")

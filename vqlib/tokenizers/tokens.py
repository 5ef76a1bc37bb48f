"""The tokens file of ``vqlib encode`` / ``vqlib decode``: named token maps in one safetensors file.

One int64 tensor per image (``(h, w)``, or ``(h, w, num_codebooks)`` for
factorised quantizers), keyed by a name (the image's file stem). The
safetensors metadata (string values only) records

* ``format``: ``"vqlib.tokens"``;
* ``format_version``: an integer (written as its decimal string), at most
  :data:`FORMAT_VERSION` to be read; files of vqlib 0.1 wrote the same number
  under ``version`` and still load;
* ``tokenizer``: where the tokenizer that wrote it was loaded from (informative);
* ``codebook_size``: the codes per codebook, so that decoding with another
  tokenizer is refused instead of indexing out of range.

No pickle; writes go through :func:`vqlib.io.atomic_write`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..io import atomic_write

__all__ = ["FORMAT", "FORMAT_VERSION", "TokensFile", "TokensFileError", "load_tokens", "save_tokens"]

FORMAT = "vqlib.tokens"
FORMAT_VERSION = 1


class TokensFileError(ValueError):
    """A file that is not a readable vqlib tokens file (or does not fit the tokenizer)."""


class TokensFile(dict):
    """The token maps of a tokens file (``name -> int64 tensor``), its metadata ``meta`` and its ``path``."""

    def __init__(self, tokens: dict[str, torch.Tensor], meta: dict[str, str], path: Path):
        super().__init__(tokens)
        self.meta, self.path = meta, path

    @property
    def codebook_size(self) -> int | None:
        value = self.meta.get("codebook_size")
        return int(value) if value is not None else None

    def check_codebook_size(self, codebook_size: int, where: str = "the tokenizer") -> None:
        """Refuse indices that ``codebook_size`` codes cannot decode, naming the file and the first bad map."""
        recorded = self.codebook_size
        if recorded is not None and recorded != codebook_size:
            raise TokensFileError(
                f"{self.path} was written by a tokenizer with {recorded} codes, but {where} has "
                f"{codebook_size}: decode with the tokenizer that encoded it"
            )
        for name, idx in self.items():
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= codebook_size):
                raise TokensFileError(
                    f"{self.path}: token map {name!r} holds indices in [{int(idx.min())}, {int(idx.max())}], "
                    f"outside the {codebook_size} codes of {where}: decode with the tokenizer that encoded it"
                )


def save_tokens(
    path: str | os.PathLike, tokens: dict[str, torch.Tensor], tokenizer: str | None = None, codebook_size: int | None = None
) -> Path:
    """Write ``name -> integer tensor`` token maps (stored as int64) to ``path`` atomically."""
    from safetensors.torch import save_file

    if not tokens:
        raise ValueError("no token maps to write")
    bad = [name for name, t in tokens.items() if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool]
    if bad:
        raise ValueError(f"token maps must be integer tensors; {bad} are not")
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    if tokenizer is not None:
        meta["tokenizer"] = str(tokenizer)
    if codebook_size is not None:
        meta["codebook_size"] = str(int(codebook_size))
    tensors = {name: t.detach().to("cpu", torch.int64).contiguous() for name, t in tokens.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_tokens(path: str | os.PathLike) -> TokensFile:
    """Read a tokens file; raises :class:`TokensFileError` naming the file when it is not one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    hint = "expected a tokens file written by `vqlib encode`"
    if not path.is_file():
        raise TokensFileError(f"{path} does not exist or is not a file; {hint}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            if meta.get("format") != FORMAT:
                raise TokensFileError(f"{path} is a safetensors file but not a vqlib tokens file (no format {FORMAT!r}); {hint}")
            tokens = {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as err:
        raise TokensFileError(f"{path} is not a tokens file (not safetensors: {err}); {hint}") from None
    except OSError as err:
        raise TokensFileError(f"{path} cannot be read ({err}); {hint}") from None
    raw_version = meta.get("format_version", meta.get("version"))  # "version": files of vqlib 0.1
    try:
        version = int(raw_version)
    except (TypeError, ValueError):
        raise TokensFileError(f"{path} has no valid format version ({raw_version!r}); {hint}") from None
    if version < 1 or version > FORMAT_VERSION:
        raise TokensFileError(f"{path} has tokens format version {version}; this vqlib reads up to {FORMAT_VERSION}: upgrade vqlib")
    bad = [name for name, t in tokens.items() if t.is_floating_point() or t.dtype == torch.bool]
    if bad:
        raise TokensFileError(f"{path}: token maps {bad} are not integer tensors; {hint}")
    return TokensFile({name: t.long() for name, t in tokens.items()}, meta, path)

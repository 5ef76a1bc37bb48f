"""Pre-tokenised class-conditional data: images are encoded once by a trained tokenizer and cached.

The cache is a safetensors file per split (``tokens`` int64, ``labels`` int64) whose metadata records the
SHA-256 of the tokenizer's ``config.json`` (which itself records its weights' SHA-256): a different or
retrained tokenizer never reads stale tokens, it re-encodes. Batches are ``(tokens, labels, images)``; the
images (in ``[-1, 1]``) feed REPA's target encoder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ..io import atomic_write
from ..tokenizers import VQTokenizer
from ..tokenizers.mnist import load_mnist32, to_images

__all__ = ["TokenDataModule", "TokenDataset", "tokenizer_hash"]

CACHE_FORMAT = "vqlib.token_cache"
CACHE_VERSION = "1"


def tokenizer_hash(directory: str | Path) -> str:
    """SHA-256 of a saved tokenizer's ``config.json`` (it carries the weights' checksum)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no config.json: pass the folder a tokenizer's save_pretrained wrote")
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TokenDataset(Dataset):
    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor, images: torch.Tensor):
        self.tokens, self.labels, self.images = tokens, labels, images

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int):
        return self.tokens[i], self.labels[i], to_images(self.images[i : i + 1])[0]


@torch.no_grad()
def encode_images(tokenizer: VQTokenizer, images_u8: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([tokenizer.encode(to_images(images_u8[i : i + batch])) for i in range(0, len(images_u8), batch)])


class TokenDataModule(pl.LightningDataModule):
    """MNIST 32×32 digits with their labels, tokenised once by ``tokenizer`` (a ``save_pretrained`` folder).

    Args:
        tokenizer: the trained tokenizer's folder.
        cache_dir: where the token caches live.
        train_limit, val_limit: first digits of the ``train``/``valid`` splits (``None``: all).
    """

    def __init__(
        self,
        tokenizer: str,
        cache_dir: str = "runs/token_cache",
        batch_size: int = 64,
        train_limit: int | None = None,
        val_limit: int | None = 1000,
        num_workers: int = 0,
        data_dir: str | None = None,
    ):
        super().__init__()
        self.tokenizer_dir, self.cache_dir, self.batch_size = tokenizer, Path(cache_dir), batch_size
        self.limits = {"train": train_limit, "valid": val_limit}
        self.num_workers, self.data_dir = num_workers, data_dir
        self._tokenizer: VQTokenizer | None = None
        self.train_set = self.val_set = None

    @property
    def tokenizer(self) -> VQTokenizer:
        if self._tokenizer is None:
            self._tokenizer = VQTokenizer.from_pretrained(self.tokenizer_dir).eval()
        return self._tokenizer

    def cache_path(self, split: str) -> Path:
        limit = self.limits[split]
        return self.cache_dir / f"mnist32-{split}-{'all' if limit is None else limit}-{tokenizer_hash(self.tokenizer_dir)[:16]}.safetensors"

    def _load(self, split: str, build: bool):
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        x, y = load_mnist32(split, self.data_dir)
        limit = self.limits[split]
        x, y = torch.from_numpy(x[:limit]), torch.from_numpy(y[:limit])
        path, want = self.cache_path(split), tokenizer_hash(self.tokenizer_dir)
        if path.is_file():
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            if meta.get("tokenizer_sha256") == want and meta.get("count") == str(len(x)) and meta.get("version") == CACHE_VERSION:
                t = load_file(str(path))
                return t["tokens"], t["labels"], x
        if not build:
            return None
        tokens = encode_images(self.tokenizer, x)
        meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "tokenizer_sha256": want, "split": split, "count": str(len(x))}
        atomic_write(path, lambda tmp: save_file({"tokens": tokens.contiguous(), "labels": y.contiguous()}, tmp, metadata=meta))
        return tokens, y, x

    def prepare_data(self) -> None:
        for split in self.limits:
            self._load(split, build=True)  # rank 0 only under DDP; the others read the cache in setup

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = TokenDataset(*self._load("train", build=True))
            self.val_set = TokenDataset(*self._load("valid", build=True))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)

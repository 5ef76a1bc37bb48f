"""Image data for tokenizer training: any folder of images, or scikit-image's bundled photos.

Both data modules yield ``(B, 3, S, S)`` float tensors in ``[-1, 1]``.
Training crops are random (random scale, position and horizontal flip);
validation crops are a fixed grid over whole held-out images, so that no
validation pixel is ever seen in training.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .images import to_rgb_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")

# Natural photographs bundled inside the scikit-image wheel (no download).
SKIMAGE_TRAIN = (
    "camera", "chelsea", "coins", "rocket", "hubble_deep_field", "retina", "grass", "brick",
    "immunohistochemistry", "moon", "page", "text", "colorwheel", "logo", "cell", "horse",
)  # fmt: skip
SKIMAGE_VAL = ("astronaut", "coffee", "gravel", "clock")


def _resize_short_side(img: torch.Tensor, short: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    scale = short / min(h, w)
    size = (max(short, round(h * scale)), max(short, round(w * scale)))
    return F.interpolate(img[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


class RandomCrops(Dataset):
    """``length`` random crops per epoch from in-memory images (random scale, position, flip)."""

    def __init__(self, images: list[torch.Tensor], size: int, length: int, min_scale: float = 0.5, seed: int = 0):
        self.images, self.size, self.length, self.min_scale, self.seed = images, size, length, min_scale, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFFFFFF)
        img = self.images[int(torch.randint(len(self.images), (1,), generator=g))]
        h, w = img.shape[-2:]
        # a crop covering between min_scale and all of the short side, resized to size
        short = min(h, w)
        lo = max(self.size, int(short * self.min_scale))
        side = int(torch.randint(lo, short + 1, (1,), generator=g)) if short > lo else short
        top = int(torch.randint(h - side + 1, (1,), generator=g))
        left = int(torch.randint(w - side + 1, (1,), generator=g))
        crop = img[:, top : top + side, left : left + side]
        if side != self.size:
            crop = F.interpolate(crop[None], size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)[0]
        if torch.rand((), generator=g) < 0.5:
            crop = crop.flip(-1)
        return crop.clamp(0, 1) * 2 - 1


class EpochSampler(DistributedSampler):
    """In-order indices split across ranks; ``set_epoch`` draws new crops for each epoch.

    Lightning builds the training loader once and calls ``set_epoch`` on its
    sampler every epoch; that is how the crops change between epochs. Being a
    ``DistributedSampler`` (the world size and rank come from
    ``torch.distributed`` when it is initialised), Lightning leaves it alone
    under DDP instead of wrapping it, so ``set_epoch`` still reaches the
    dataset and every rank sees its own, new crops each epoch.
    """

    def __init__(self, dataset: RandomCrops, num_replicas: int | None = None, rank: int | None = None):
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if distributed else 1
        if rank is None:
            rank = torch.distributed.get_rank() if distributed else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset.epoch = epoch


class GridCrops(Dataset):
    """Non-overlapping ``size`` crops covering each image resized to short side ``short``."""

    def __init__(self, images: list[torch.Tensor], size: int, short: int | None = None):
        crops = []
        for img in images:
            img = _resize_short_side(img, short or 4 * size)
            h, w = img.shape[-2:]
            for top in range(0, h - size + 1, size):
                for left in range(0, w - size + 1, size):
                    crops.append(img[:, top : top + size, left : left + size])
        self.crops = crops

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.crops[i].clamp(0, 1) * 2 - 1


def load_skimage(names) -> list[torch.Tensor]:
    import skimage.data

    images = []
    for name in names:
        images.append(to_rgb_tensor(getattr(skimage.data, name)()))
    return images


def load_folder(folder: str | Path, min_size: int) -> list[tuple[Path, torch.Tensor]]:
    """Every readable image under ``folder`` (recursive). Unreadable files are skipped with a warning."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist or is not a directory")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.load()
                arr = np.asarray(im.convert("RGBA" if "A" in im.getbands() else "RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as err:
            warnings.warn(f"skipping {path}: not a readable image ({err})", stacklevel=2)
            continue
        if min(arr.shape[:2]) < min_size:
            raise ValueError(
                f"{path} is {arr.shape[1]}x{arr.shape[0]}, smaller than the crop size {min_size}: "
                "lower data.size or remove the image"
            )
        images.append((path, to_rgb_tensor(arr)))
    if not images:
        raise ValueError(f"no readable images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}")
    return images


class _CropDataModule(pl.LightningDataModule):
    def __init__(self, size: int, batch_size: int, crops_per_epoch: int, num_workers: int, seed: int):
        super().__init__()
        if size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {size}")
        self.size, self.batch_size, self.crops_per_epoch = size, batch_size, crops_per_epoch
        self.num_workers, self.seed = num_workers, seed
        self.train_set: RandomCrops | None = None
        self.val_set: GridCrops | None = None

    def _images(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            train, val = self._images()
            self.train_set = RandomCrops(train, self.size, self.crops_per_epoch, seed=self.seed)
            self.val_set = GridCrops(val, self.size)

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSampler(self.train_set)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)


class SkimageDataModule(_CropDataModule):
    """The embedded default: crops of scikit-image's bundled photographs.

    Whole images are held out for validation (``val_images``), so validation
    crops never overlap training crops.
    """

    def __init__(
        self,
        size: int = 64,
        batch_size: int = 16,
        crops_per_epoch: int = 2048,
        train_images: tuple[str, ...] = SKIMAGE_TRAIN,
        val_images: tuple[str, ...] = SKIMAGE_VAL,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(size, batch_size, crops_per_epoch, num_workers, seed)
        overlap = set(train_images) & set(val_images)
        if overlap:
            raise ValueError(f"images both in training and validation: {sorted(overlap)}")
        self.train_images, self.val_images = tuple(train_images), tuple(val_images)

    def _images(self):
        train = load_skimage(self.train_images)
        val = load_skimage(self.val_images)
        small = [n for n, im in zip(self.train_images + self.val_images, train + val) if min(im.shape[-2:]) < self.size]
        if small:
            raise ValueError(f"images smaller than the crop size {self.size}: {small}; lower size")
        return train, val


class ImageFolderDataModule(_CropDataModule):
    """Any folder of images (recursive). Validation: ``val_dir``, or every ``val_every``-th file by sorted path."""

    def __init__(
        self,
        root: str,
        size: int = 256,
        batch_size: int = 16,
        crops_per_epoch: int = 10000,
        val_dir: str | None = None,
        val_every: int = 20,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(size, batch_size, crops_per_epoch, num_workers, seed)
        self.root, self.val_dir, self.val_every = root, val_dir, val_every

    def _images(self):
        found = load_folder(self.root, self.size)
        if self.val_dir is not None:
            return [im for _, im in found], [im for _, im in load_folder(self.val_dir, self.size)]
        if len(found) < 2:
            raise ValueError(f"{self.root} holds {len(found)} image; need at least 2 (or pass val_dir)")
        val = [im for i, (_, im) in enumerate(found) if i % self.val_every == 0]
        train = [im for i, (_, im) in enumerate(found) if i % self.val_every != 0]
        return train, val


import numpy as np
import pytest
import torch
from PIL import Image

from vqlib.tokenizers.data import ImageFolderDataModule, SkimageDataModule, load_folder


def write_image(path, w=40, h=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)).save(path)


def test_folder_is_recursive_and_skips_corrupt_files(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "sub" / "b.jpg")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning, match="broken.png"):
        found = load_folder(tmp_path, min_size=16)
    assert [p.name for p, _ in found] == ["a.png", "b.jpg"]
    img = found[0][1]
    assert img.shape == (3, 30, 40) and 0 <= img.min() and img.max() <= 1


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="no readable images"):
        load_folder(tmp_path, 16)
    with pytest.raises(ValueError, match="does not exist"):
        load_folder(tmp_path / "nope", 16)
    write_image(tmp_path / "small.png", w=10, h=12)
    with pytest.raises(ValueError, match="smaller than the crop size 16: lower data.size"):
        load_folder(tmp_path, 16)


def test_folder_datamodule_batches(tmp_path):
    for i in range(6):
        write_image(tmp_path / f"{i}.png", w=48, h=40)
    dm = ImageFolderDataModule(str(tmp_path), size=16, batch_size=4, crops_per_epoch=8, val_every=3)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 3, 16, 16) and batch.min() >= -1 and batch.max() <= 1
    assert len(dm.val_set) > 0


def test_skimage_holds_out_whole_images():
    dm = SkimageDataModule(size=32, batch_size=4, crops_per_epoch=8)
    assert not set(dm.train_images) & set(dm.val_images)
    dm.setup()
    assert len(dm.val_set) >= 40
    with pytest.raises(ValueError, match="both in training and validation"):
        SkimageDataModule(train_images=("camera",), val_images=("camera",))


def test_training_crops_are_deterministic_per_epoch():
    dm = SkimageDataModule(size=32, batch_size=4, crops_per_epoch=8)
    dm.setup()
    a = dm.train_set[3]
    assert torch.equal(a, dm.train_set[3])
    dm.train_set.epoch = 1
    assert not torch.equal(a, dm.train_set[3])


def test_each_epoch_draws_new_crops():
    from lightning.fabric.utilities.data import _set_sampler_epoch

    dm = SkimageDataModule(size=32, batch_size=4, crops_per_epoch=8)
    dm.setup()
    loader = dm.train_dataloader()
    first = next(iter(loader))
    assert torch.equal(first, next(iter(loader)))
    _set_sampler_epoch(loader, 1)  # what Lightning's fit loop calls at each epoch start
    assert not torch.equal(first, next(iter(loader)))

import json

import pytest
import torch

from vqlib.quantizers import FSQ
from vqlib.tokenizers import VQTokenizer

from .conftest import tiny_tokenizer


@pytest.mark.parametrize("kind", ["fsq", "vq"])
def test_shapes_and_encode_decode_match_forward(kind):
    torch.manual_seed(0)
    model = tiny_tokenizer(kind).eval()
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    recon, q = model(x)
    assert recon.shape == x.shape
    assert q.indices.shape == (2, 8, 12)
    idx = model.encode(x)
    assert torch.equal(idx, q.indices)
    assert torch.equal(model.decode(idx), recon)
    assert model.bits_per_pixel() == pytest.approx(model.quantizer.bits_per_index / 4)


def test_gradients_reach_encoder_and_decoder(tokenizer):
    recon, q = tokenizer(torch.rand(2, 3, 16, 16) * 2 - 1)
    (recon.square().mean() + q.loss).backward()
    assert tokenizer.encoder.conv_in.weight.grad.abs().sum() > 0
    assert tokenizer.decoder.conv_out.weight.grad.abs().sum() > 0


def test_save_and_load_pretrained(tmp_path, tokenizer):
    tokenizer.eval()
    tokenizer.save_pretrained(tmp_path / "tok")
    files = sorted(p.name for p in (tmp_path / "tok").iterdir())
    assert files == ["config.json", "model.safetensors"]  # no temporary files left behind
    meta = json.loads((tmp_path / "tok" / "config.json").read_text())
    # vqlib's one save format (vqlib.quantizers.config): version, class path, recorded arguments
    assert meta["format_version"] == 1 and meta["class_path"] == "vqlib.tokenizers.model.VQTokenizer"
    assert meta["init_args"]["quantizer"]["class_path"] == "vqlib.quantizers.fsq.FSQ"
    loaded = VQTokenizer.from_pretrained(tmp_path / "tok")
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(loaded(x)[0], tokenizer(x)[0])


def test_version_1_tokenizer_exports_still_load(tmp_path, tokenizer):
    # the layout vqlib 0.1 wrote before the shared ConfigMixin format
    tokenizer.eval()
    d = tokenizer.save_pretrained(tmp_path / "tok")
    meta = json.loads((d / "config.json").read_text())
    legacy = {"format": "vqlib.tokenizer", "version": 1, "class": "VQTokenizer", "config": meta["init_args"],
              "weights": meta["weights"]}  # fmt: skip
    (d / "config.json").write_text(json.dumps(legacy))
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(VQTokenizer.from_pretrained(d)(x)[0], tokenizer(x)[0])
    legacy["version"] = 2
    (d / "config.json").write_text(json.dumps(legacy))
    with pytest.raises(ValueError, match="format version 2; this vqlib reads up to 1"):
        VQTokenizer.from_pretrained(d)


def test_corrupt_export_is_refused(tmp_path, tokenizer):
    d = tokenizer.save_pretrained(tmp_path / "tok")
    weights = d / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        VQTokenizer.from_pretrained(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        VQTokenizer.from_pretrained(d)
    with pytest.raises(ValueError, match="no config.json"):
        VQTokenizer.from_pretrained(tmp_path / "missing")


def test_bad_configuration_and_input(tokenizer):
    with pytest.raises(ValueError, match="must equal z_channels"):
        VQTokenizer(FSQ([5, 5], dim=8), ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=16)
    with pytest.raises(ValueError, match="unknown quantizer"):
        VQTokenizer({"class_path": "NoSuchQuantizer", "init_args": {}}, z_channels=16)
    with pytest.raises(ValueError, match="multiples of 2"):
        tokenizer(torch.rand(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        tokenizer(torch.rand(3, 16, 16))

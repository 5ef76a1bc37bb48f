"""The tokens file of `vqlib encode`/`vqlib decode` (vqlib/tokenizers/tokens.py)."""

import pytest
import torch
from safetensors.torch import save_file

from vqlib.tokenizers.tokens import FORMAT_VERSION, TokensFileError, load_tokens, save_tokens


def test_round_trip(tmp_path):
    maps = {"a": torch.randint(0, 100, (5, 7), dtype=torch.int32), "b": torch.randint(0, 100, (3, 4, 2))}
    path = save_tokens(tmp_path / "t.safetensors", maps, tokenizer="runs/demo/tokenizer", codebook_size=100)
    loaded = load_tokens(path)
    assert sorted(loaded) == ["a", "b"]
    for name, t in maps.items():
        assert loaded[name].dtype == torch.int64
        assert torch.equal(loaded[name], t.long())
    assert loaded.meta["format_version"] == str(FORMAT_VERSION) and loaded.codebook_size == 100
    assert loaded.meta["tokenizer"] == "runs/demo/tokenizer" and loaded.path == path
    loaded.check_codebook_size(100)
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temporary file left


def test_reads_files_of_vqlib_0_1(tmp_path):
    # what the CLI of vqlib 0.1 wrote: the version under "version", no codebook size
    path = tmp_path / "old.safetensors"
    idx = torch.arange(12).reshape(3, 4)
    save_file({"img": idx}, str(path), metadata={"format": "vqlib.tokens", "version": "1", "tokenizer": "x"})
    loaded = load_tokens(path)
    assert torch.equal(loaded["img"], idx) and loaded.codebook_size is None
    loaded.check_codebook_size(12)
    with pytest.raises(TokensFileError, match=r"indices in \[0, 11\], outside the 8 codes"):
        loaded.check_codebook_size(8)


def test_refuses_what_is_not_a_tokens_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(TokensFileError, match=r"notes.txt is not a tokens file .*written by `vqlib encode`"):
        load_tokens(text)
    with pytest.raises(TokensFileError, match="missing.safetensors does not exist"):
        load_tokens(tmp_path / "missing.safetensors")
    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights))
    with pytest.raises(TokensFileError, match="model.safetensors is a safetensors file but not a vqlib tokens file"):
        load_tokens(weights)
    newer = tmp_path / "newer.safetensors"
    save_file({"a": torch.zeros(2, 2, dtype=torch.long)}, str(newer), metadata={"format": "vqlib.tokens", "format_version": str(FORMAT_VERSION + 1)})
    with pytest.raises(TokensFileError, match="upgrade vqlib"):
        load_tokens(newer)
    floats = tmp_path / "floats.safetensors"
    save_file({"a": torch.zeros(2, 2)}, str(floats), metadata={"format": "vqlib.tokens", "format_version": "1"})
    with pytest.raises(TokensFileError, match=r"\['a'\] are not integer tensors"):
        load_tokens(floats)


def test_codebook_mismatch_and_bad_input(tmp_path):
    path = save_tokens(tmp_path / "t.safetensors", {"a": torch.zeros(2, 2, dtype=torch.long)}, codebook_size=64)
    with pytest.raises(TokensFileError, match="written by a tokenizer with 64 codes, but the tokenizer in x has 32"):
        load_tokens(path).check_codebook_size(32, "the tokenizer in x")
    with pytest.raises(ValueError, match="must be integer tensors"):
        save_tokens(tmp_path / "f.safetensors", {"a": torch.zeros(2)})
    with pytest.raises(ValueError, match="no token maps"):
        save_tokens(tmp_path / "e.safetensors", {})
    assert not (tmp_path / "f.safetensors").exists() and not (tmp_path / "e.safetensors").exists()

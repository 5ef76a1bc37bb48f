"""Command-line mistakes through the real `vqlib` command: one line naming the file and what was expected,
exit status 2, nothing written; `--debug` or VQLIB_DEBUG=1 shows the traceback."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqlib.tokenizers.tokens import save_tokens

from .tokenizers.conftest import tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def vqlib(args, cwd, **env):
    return subprocess.run([sys.executable, "-m", "vqlib.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", **env})  # fmt: skip


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vqlib: error: "), proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    torch.manual_seed(0)
    tiny_tokenizer().save_pretrained(root / "tok")
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(root / "img.png")
    (root / "notes.txt").write_text("not an image")
    np.save(root / "vectors.npy", np.zeros((4, 8), np.float32))
    return root


def test_encode_a_file_that_is_not_an_image(workdir):
    proc = vqlib(["encode", "notes.txt", "--tokenizer", "tok", "-o", "out.safetensors"], workdir)
    assert_one_line_error(proc, "notes.txt is not an image", "expected an image file")
    assert not (workdir / "out.safetensors").exists()


def test_decode_a_file_that_is_not_a_tokens_file(workdir):
    proc = vqlib(["decode", "tok/model.safetensors", "--tokenizer", "tok", "-o", "decoded"], workdir)
    assert_one_line_error(proc, "model.safetensors", "not a vqlib tokens file", "written by `vqlib encode`")
    assert not (workdir / "decoded").exists()


def test_decode_tokens_of_another_tokenizer(workdir):
    save_tokens(workdir / "other.safetensors", {"a": torch.zeros(2, 2, dtype=torch.long)}, codebook_size=7)
    proc = vqlib(["decode", "other.safetensors", "--tokenizer", "tok", "-o", "decoded"], workdir)
    assert_one_line_error(proc, "other.safetensors", "7 codes", "125")
    assert not (workdir / "decoded").exists()


def test_anns_search_on_vectors_instead_of_an_index(workdir):
    proc = vqlib(["anns", "search", "vectors.npy", "vectors.npy", "-o", "res.npz"], workdir)
    assert_one_line_error(proc, "vectors.npy", "not a vqlib.anns index", "vqlib anns build", "as the queries")
    assert not (workdir / "res.npz").exists()


def test_missing_tokenizer_folder(workdir):
    missing = workdir / "runs" / "nowhere" / "tokenizer"
    proc = vqlib(["encode", "img.png", "--tokenizer", str(missing), "-o", "out.safetensors"], workdir)
    assert_one_line_error(proc, str(missing), "vqlib fit", "make demo")
    assert not (workdir / "out.safetensors").exists()


def test_tampered_tokenizer_and_debug(tmp_path, workdir):
    torch.manual_seed(0)
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    weights = tmp_path / "tok" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    args = ["encode", str(workdir / "img.png"), "--tokenizer", "tok", "-o", "out.safetensors"]
    assert_one_line_error(vqlib(args, tmp_path), "model.safetensors", "checksum", "save_pretrained")
    for proc in (vqlib([*args, "--debug"], tmp_path), vqlib(args, tmp_path, VQLIB_DEBUG="1")):
        assert proc.returncode != 0 and "Traceback" in proc.stderr and "PretrainedFileError" in proc.stderr
    assert not (tmp_path / "out.safetensors").exists()

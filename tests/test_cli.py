"""`vqlib fit`, `vqlib encode` and `vqlib decode` end to end on a tiny model."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def run(args, cwd):
    proc = subprocess.run([sys.executable, "-m", "vqlib.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_fit_export_encode_decode(tmp_path):
    out = run(
        [
            "fit", "--config", str(ROOT / "configs/tokenizer/demo.yaml"), "--trainer.max_steps", "2",
            "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
            "--model.model.init_args.ch", "8", "--model.model.init_args.ch_mult", "[1, 2, 2, 2]",
            "--data.init_args.batch_size", "2", "--data.init_args.size", "32",
        ],
        tmp_path,
    )  # fmt: skip
    export = tmp_path / "runs/demo/tokenizer"
    assert (export / "config.json").is_file() and (tmp_path / "runs/demo/recon.png").is_file()
    assert "PSNR (dB)" in out and "codebook usage" in out
    image = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(image)
    run(["encode", str(image), "--tokenizer", str(export), "-o", str(tmp_path / "tokens.safetensors")], tmp_path)
    tokens = load_file(str(tmp_path / "tokens.safetensors"))
    assert tokens["img"].shape == (5, 7) and tokens["img"].dtype == torch.int64
    run(["decode", str(tmp_path / "tokens.safetensors"), "--tokenizer", str(export), "-o", str(tmp_path / "dec")], tmp_path)
    with Image.open(tmp_path / "dec/img.png") as im:
        assert im.size == (56, 40)

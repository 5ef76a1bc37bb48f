"""`vqlib fit`, `vqlib encode` and `vqlib decode` end to end on a tiny model."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vqlib.cli
from vqlib.tokenizers.tokens import load_tokens

ROOT = Path(__file__).resolve().parents[1]


def run(args, cwd):
    proc = subprocess.run([sys.executable, "-m", "vqlib.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_fit_export_encode_decode(tmp_path):
    proc = run(
        [
            "fit", "--config", str(ROOT / "configs/tokenizer/demo.yaml"), "--trainer.max_steps", "2",
            "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
            "--model.model.init_args.ch", "8", "--model.model.init_args.ch_mult", "[1, 2, 2, 2]",
            "--data.init_args.batch_size", "2", "--data.init_args.size", "32", "--model.rfid", "false",
        ],
        tmp_path,
    )  # fmt: skip
    export = tmp_path / "runs/demo/tokenizer"
    assert (export / "config.json").is_file() and (tmp_path / "runs/demo/recon.png").is_file()
    out = proc.stdout
    assert "PSNR (dB)" in out and "codebook usage" in out
    # stdout is not a terminal: plain progress lines; the summary says which limit stopped training
    assert "step 1/2  loss " in out and "step 2/2  loss " in out and "steps/s  ETA " in out
    assert "max_steps reached" in out and "validation at step 2: psnr " in out
    # none of the notices Lightning printed on every vqlib run
    for noise in ("args parameter is intended", "LeafSpec", "litlogger"):
        assert noise not in proc.stderr, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    image = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(image)
    run(["encode", str(image), "--tokenizer", str(export), "-o", str(tmp_path / "tokens.safetensors")], tmp_path)
    tokens = load_file(str(tmp_path / "tokens.safetensors"))
    assert tokens["img"].shape == (5, 7) and tokens["img"].dtype == torch.int64
    assert load_tokens(tmp_path / "tokens.safetensors").codebook_size == 17**4
    run(["decode", str(tmp_path / "tokens.safetensors"), "--tokenizer", str(export), "-o", str(tmp_path / "dec")], tmp_path)
    with Image.open(tmp_path / "dec/img.png") as im:
        assert im.size == (56, 40)


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_omp_wait_policy_restarts_training_commands(monkeypatch, command):
    calls = []
    monkeypatch.setattr(vqlib.cli.os, "execv", lambda exe, args: calls.append((exe, args)))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(vqlib.cli, "OMP_WAIT_POLICY", "PASSIVE")
    vqlib.cli._apply_omp_wait_policy([command, "--config", "x.yaml"])
    # torch (and OpenMP with it) is loaded already, so the policy needs a fresh process to take effect
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert calls == [(sys.executable, [sys.executable, "-m", "vqlib.cli", command, "--config", "x.yaml"])]


def test_omp_wait_policy_left_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(vqlib.cli.os, "execv", lambda exe, args: calls.append((exe, args)))
    monkeypatch.setattr(vqlib.cli, "OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice wins
    vqlib.cli._apply_omp_wait_policy(["fit"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    vqlib.cli._apply_omp_wait_policy(["encode", "a.png"])  # not a training command
    monkeypatch.setattr(vqlib.cli, "OMP_WAIT_POLICY", None)  # switched off
    vqlib.cli._apply_omp_wait_policy(["fit"])
    assert calls == [] and "OMP_WAIT_POLICY" not in os.environ

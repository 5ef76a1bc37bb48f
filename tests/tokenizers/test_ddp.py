"""Lightning DDP with 2 CPU processes: both ranks end with identical weights and codebooks."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("ddp_train.py")


def test_ddp_two_ranks_identical(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[2])}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"differ between ranks: {differ}"
    assert int(a["model.quantizer.initted"]) == 1  # k-means ran (on both ranks' data)
    assert int(a["step"]) > 2  # the discriminator phase was reached

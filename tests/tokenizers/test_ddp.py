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
    # 32 crops per epoch over 2 ranks at batch 4: 4 batches per rank per epoch, and the run spans 2 epochs
    batches = {r: {(int(e), int(i)): v for e, i, v in t.tolist()} for r, t in enumerate((a.pop("_batches"), b.pop("_batches")))}
    assert (1, 0) in batches[0], "the run did not reach a second epoch"
    assert batches[0][(0, 0)] != batches[1][(0, 0)], "both ranks trained on the same crops"
    assert batches[0][(0, 0)] != batches[0][(1, 0)], "epoch 1 repeated epoch 0's crops"
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"differ between ranks: {differ}"
    assert int(a["model.quantizer.initted"]) == 1  # k-means ran (on both ranks' data)
    assert int(a["step"]) > 2  # the discriminator phase was reached

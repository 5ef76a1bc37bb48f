"""Kernel tests run on CPU tensors under Triton's interpreter.

TRITON_INTERPRET is read when a kernel is decorated, i.e. when vqlib.kernels.vq_triton is
first imported, so it is set here at import time, before any test module imports vqlib.kernels.
setdefault: an explicit TRITON_INTERPRET=0 on a GPU machine keeps the compiled kernels.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def kernels_runnable() -> tuple[bool, str]:
    from vqlib.kernels import vq_triton

    if not vq_triton.HAS_TRITON:
        return False, "triton is not installed"
    if not (vq_triton.INTERPRET or torch.cuda.is_available()):
        return False, "vqlib.kernels was imported before TRITON_INTERPRET=1 was set, and there is no GPU"
    return True, ""


@pytest.fixture
def device() -> str:
    from vqlib.kernels import vq_triton

    return "cpu" if vq_triton.INTERPRET else "cuda"

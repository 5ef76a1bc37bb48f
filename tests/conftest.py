import os

# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when vqlib.kernels is first imported; parts above
# kernels (vqlib.diffusion) import it too, so it is set here, before any test module loads (tests/kernels/conftest.py
# says why; setdefault keeps an explicit TRITON_INTERPRET=0 on a GPU machine)
os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

# the suite runs as two pytest-xdist workers on two cores: one thread each
torch.set_num_threads(1)

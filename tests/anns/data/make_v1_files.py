"""Writes the version-1 index files of test_serialize.py::test_reads_files_of_the_previous_version.

Run once with the vqlib of commit bf1b8a4 (before refine became a wrapper) on the path:

    git archive bf1b8a4 vqlib | tar -x -C /tmp/old && PYTHONPATH=/tmp/old python tests/anns/data/make_v1_files.py

Each case stores ``<name>.vqann`` and ``<name>.npz`` with the data and that version's search results.
"""

from pathlib import Path

import numpy as np
import torch

from vqlib.anns import index_factory, write_index

CASES = {  # name: (factory string, metric)
    "flat": ("Flat", "l2"),
    "saq3_ip": ("SAQ3", "ip"),
    "saq1.5_refine": ("SAQ1.5,Refine", "l2"),
    "ivf4_saq2": ("IVF4,SAQ2", "l2"),
    "ivf4_saq3_refine_ip": ("IVF4,SAQ3,Refine", "ip"),
}


def data():
    rng = np.random.default_rng(7)
    d = 16
    scale = np.exp(-np.arange(d) / 6.0)
    x = (rng.standard_normal((330, d)) * scale + rng.standard_normal((4, d))[rng.integers(0, 4, 330)]).astype(np.float32)
    return x[:300], x[300:]


def main():
    torch.set_num_threads(1)
    out = Path(__file__).parent
    xb, xq = data()
    for name, (description, metric) in CASES.items():
        index = index_factory(16, description, metric=metric)
        index.train(xb)
        index.add_with_ids(xb[:250], np.arange(1000, 1250))
        index.add(xb[250:])
        index.remove_ids(np.arange(1000, 1010))
        params = {"nprobe": 2} if "IVF" in description else None
        D, I = index.search(xq, 5, params)
        write_index(index, out / f"{name}.vqann")
        np.savez(out / f"{name}.npz", D=D, I=I)


if __name__ == "__main__":
    main()

"""FAISS-style approximate nearest-neighbour indexes on SAQ codes.

    from vqlib.anns import index_factory, write_index, read_index

    index = index_factory(128, "IVF256,SAQ4", nprobe=16)   # ",Refine" wraps it in a RefineIndex
    index.train(xb)
    index.add(xb)
    D, I = index.search(xq, 10)          # float32 / int64 arrays (nq, 10)
    write_index(index, "sift.vqann")
"""

from .base import Index, SearchParams, get_num_threads, set_num_threads
from .factory import index_factory
from .flat import FlatIndex
from .ivf_saq import IVFSAQIndex
from .refine import RefineIndex
from .saq_index import SAQIndex
from .saq_lists import SAQLists
from .serialize import FORMAT_VERSION, IndexFileError, deserialize_index, read_index, serialize_index, write_index

__all__ = [
    "FORMAT_VERSION",
    "FlatIndex",
    "IVFSAQIndex",
    "Index",
    "IndexFileError",
    "RefineIndex",
    "SAQIndex",
    "SAQLists",
    "SearchParams",
    "deserialize_index",
    "get_num_threads",
    "index_factory",
    "read_index",
    "serialize_index",
    "set_num_threads",
    "write_index",
]

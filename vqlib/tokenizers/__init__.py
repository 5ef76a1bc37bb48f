"""Image tokenizers: VQ autoencoders around vqlib quantizers, trained with Lightning."""

from .model import VQTokenizer

__all__ = ["VQTokenizer"]

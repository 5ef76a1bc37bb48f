"""The diffusion testbed: MNIST 16×16, small trained DiT / PixArt pipelines and a digits classifier (no vqlib import)."""

"""The ``vqlib`` command.

    vqlib fit --config configs/tokenizer/demo.yaml      # LightningCLI: fit, validate, test
    vqlib validate --config ... --ckpt_path last.ckpt
    vqlib encode IMAGES... --tokenizer DIR -o tokens.safetensors
    vqlib decode tokens.safetensors --tokenizer DIR -o OUT_DIR
    vqlib anns build|search|bench ...                   # ANN indexes on SAQ codes (vqlib.anns.cli)
    vqlib fit --config configs/generation/mnist.yaml    # a config with model.generator trains a LlamaGen (ARModule)
    vqlib sample --generator DIR --tokenizer DIR --classes 0,3,7 --cfg 4.0 --seed 0 -o samples.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("encode", "decode"):
        return _tokens_command(argv)
    if argv and argv[0] == "anns":
        from .anns.cli import main as anns_main

        return anns_main(argv[1:])
    if argv and argv[0] == "sample":
        from .generation.cli import sample_main

        return sample_main(argv[1:])
    import torch
    from lightning.pytorch.cli import LightningCLI

    # denormal floats from tiny EMA/Adam statistics slow CPU training several-fold
    torch.set_flush_denormal(True)

    from .generation.cli import is_generation_config

    if is_generation_config(argv):
        from .generation.module import ARModule

        LightningCLI(ARModule, args=argv, save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)
        return

    from .tokenizers.module import TokenizerModule

    LightningCLI(TokenizerModule, args=argv, save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)


def _tokens_command(argv: list[str]) -> None:
    from safetensors.torch import load_file, save_file

    from .tokenizers import VQTokenizer
    from .tokenizers.callbacks import save_grid
    from .tokenizers.data import to_rgb_tensor

    parser = argparse.ArgumentParser(prog="vqlib")
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="images -> token indices (safetensors)")
    enc.add_argument("images", nargs="+")
    enc.add_argument("--tokenizer", required=True, help="a directory written by save_pretrained")
    enc.add_argument("--size", type=int, default=None, help="resize the short side and centre-crop to this size")
    enc.add_argument("-o", "--output", required=True)
    dec = sub.add_parser("decode", help="token indices (safetensors) -> PNG images")
    dec.add_argument("tokens")
    dec.add_argument("--tokenizer", required=True)
    dec.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    model = VQTokenizer.from_pretrained(args.tokenizer)

    if args.command == "encode":
        import numpy as np
        from PIL import Image

        from .io import atomic_write

        tensors = {}
        for path in args.images:
            with Image.open(path) as im:
                img = to_rgb_tensor(np.asarray(im.convert("RGB")))
            img = _fit(img, args.size, model.downsample)
            tensors[Path(path).stem] = model.encode(img[None] * 2 - 1)[0].contiguous()
        out = Path(args.output)
        meta = {"format": "vqlib.tokens", "version": "1", "tokenizer": str(args.tokenizer)}
        atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata=meta))
        print(f"wrote {len(tensors)} token maps to {out}")
    else:
        tokens = load_file(args.tokens)
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        for name, idx in tokens.items():
            img = model.decode(idx[None].long())
            save_grid(img.clamp(-1, 1), out / f"{name}.png", rows=1)
        print(f"wrote {len(tokens)} images to {out}")


def _fit(img, size, multiple):
    """Resize the short side to ``size`` (if given) and centre-crop to a multiple of the downsampling factor."""
    import torch.nn.functional as F

    if size is not None:
        h, w = img.shape[-2:]
        s = size / min(h, w)
        img = F.interpolate(img[None], size=(round(h * s), round(w * s)), mode="bilinear", antialias=True)[0]
        h, w = img.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
        img = img[:, top : top + size, left : left + size]
    h, w = img.shape[-2:]
    h2, w2 = h - h % multiple, w - w % multiple
    if h2 == 0 or w2 == 0:
        raise ValueError(f"image of {w}x{h} is smaller than the tokenizer's downsampling factor {multiple}")
    return img[:, :h2, :w2].clamp(0, 1)


if __name__ == "__main__":
    main()

"""``vqlib sample``: class-conditional samples from an exported generator, decoded by its tokenizer.

    vqlib sample --generator DIR --tokenizer DIR --classes 0,3,7 --cfg 4.0 --seed 0 -o samples.png
"""

from __future__ import annotations

import argparse
from pathlib import Path


def is_generation_config(argv: list[str]) -> bool:
    """Whether a ``--config`` YAML in ``argv`` configures an ``ARModule`` (its ``model`` has a ``generator``)."""
    import yaml

    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in paths:
        try:
            cfg = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue  # LightningCLI reports unreadable configs itself
        model = cfg.get("model") if isinstance(cfg, dict) else None
        if isinstance(model, dict) and "generator" in (model.get("init_args", model) or {}):
            return True
    return False


def sample_main(argv: list[str]) -> None:
    import torch

    from ..tokenizers import VQTokenizer
    from ..tokenizers.callbacks import save_grid
    from .llamagen import LlamaGen

    parser = argparse.ArgumentParser(prog="vqlib sample", description="class-conditional samples from a LlamaGen")
    parser.add_argument("--generator", required=True, help="a folder written by LlamaGen.save_pretrained")
    parser.add_argument("--tokenizer", required=True, help="the tokenizer folder the generator was trained on")
    parser.add_argument("--classes", required=True, help="comma-separated class labels, e.g. 0,3,7")
    parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: none)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--per-class", type=int, default=1, help="samples per class (rows of the grid)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", required=True, help="PNG file")
    args = parser.parse_args(argv)
    try:
        classes = [int(c) for c in args.classes.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--classes must be comma-separated integers, got {args.classes!r}")
    if not classes:
        parser.error("--classes names no class")
    try:
        generator = LlamaGen.from_pretrained(args.generator)
        tokenizer = VQTokenizer.from_pretrained(args.tokenizer)
        with torch.no_grad():
            _, images = generator.generate(
                classes * args.per_class, args.cfg, tokenizer=tokenizer, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, seed=args.seed,
            )
    except ValueError as err:  # PretrainedFileError is a ValueError too
        parser.exit(2, f"vqlib sample: error: {err}\n")
    save_grid(images, Path(args.output), rows=args.per_class)
    print(f"wrote {len(images)} samples to {args.output}")

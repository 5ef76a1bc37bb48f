"""The ``vqlib`` command.

    vqlib fit --config configs/tokenizer/demo.yaml      # LightningCLI: fit, validate, test
    vqlib validate --config ... --ckpt_path last.ckpt
    vqlib encode IMAGES... --tokenizer DIR -o tokens.safetensors
    vqlib decode tokens.safetensors --tokenizer DIR -o OUT_DIR
    vqlib anns build|search|bench ...                   # ANN indexes on SAQ codes (vqlib.anns.cli)
    vqlib fit --config configs/generation/mnist.yaml    # a config with model.generator trains a LlamaGen (ARModule)
    vqlib sample --generator DIR --tokenizer DIR --classes 0,3,7 --cfg 4.0 --seed 0 -o samples.png

A file that is not what a command expects (not an image, not a tokens file,
not an index, a missing or damaged tokenizer folder) is reported in one line,
``vqlib: error: ...``, naming the file and what was expected, with exit status 2
and nothing written. ``--debug`` (anywhere on the line) or ``VQLIB_DEBUG=1``
shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# OpenMP wait policy for the training commands when the user has not set one.
# PyTorch's OpenMP threads spin after each parallel region (the "ACTIVE" policy);
# on a machine whose cores another process also uses, the spinning threads steal
# each other's time and a step gets several times slower; "PASSIVE" makes them
# sleep instead. Measured by benchmarks/bench_demo.py; None leaves OpenMP's default.
OMP_WAIT_POLICY: str | None = None
TRAINING_COMMANDS = ("fit", "validate", "test", "predict")
IMAGE_HINT = "expected an image file (PNG, JPEG, WebP, BMP, TIFF, ...)"
TOKENIZER_HINT = "--tokenizer expects a folder written by `vqlib fit` or save_pretrained (`make demo` writes runs/demo/tokenizer)"


class InputError(ValueError):
    """A command-line argument naming the wrong kind of file: reported in one line, exit status 2."""


def main(argv: list[str] | None = None) -> None:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("VQLIB_DEBUG", "").strip() not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if from_command_line:
        _apply_omp_wait_policy(argv)
        sys.argv[1:] = argv  # LightningCLI reads the command line itself (passing args too makes it warn)
    try:
        _run(argv, None if from_command_line else argv)
    except _input_errors() as err:
        if debug:
            raise
        print(f"vqlib: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _input_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean "wrong file" rather than a bug (only of modules already loaded)."""
    errors: list[type[Exception]] = [InputError]
    for module, name in (
        ("vqlib.quantizers.config", "PretrainedFileError"),
        ("vqlib.tokenizers.tokens", "TokensFileError"),
        ("vqlib.anns.serialize", "IndexFileError"),
    ):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def _apply_omp_wait_policy(argv: list[str]) -> None:
    """Set ``OMP_WAIT_POLICY`` for training commands, unless the user set it or it is switched off.

    OpenMP reads its environment once, when PyTorch loads it; ``import vqlib``
    has done that by the time this runs, so the process starts itself afresh.
    """
    if OMP_WAIT_POLICY is None or "OMP_WAIT_POLICY" in os.environ or not argv or argv[0] not in TRAINING_COMMANDS:
        return
    os.environ["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY
    if "torch" in sys.modules and os.name == "posix":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "vqlib.cli", *argv])


def quiet_lightning() -> None:
    """Silence what Lightning prints on every run that a vqlib user can do nothing about (narrowly, by message).

    * lightning 2.6's ``_pytree`` builds torch's deprecated ``LeafSpec`` (a
      ``FutureWarning`` since torch 2.10), fixed upstream only in newer lightning;
    * the "litlogger" advertisement logged at ``INFO`` when a trainer is built;
    * ModelCheckpoint's note that under manual optimization (vqlib's GAN step) a
      step-interval checkpoint holds the state after that step's update: that is
      the state vqlib resumes from (tests/tokenizers/test_module.py checks it).
    """
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization and every_n_train_steps")
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLitLoggerTip) for f in logger.filters):
        logger.addFilter(_DropLitLoggerTip())


class _DropLitLoggerTip:
    def filter(self, record) -> bool:
        return "litlogger" not in str(record.msg)


def _run(argv: list[str], args: list[str] | None) -> None:
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

    quiet_lightning()
    # denormal floats from tiny EMA/Adam statistics slow CPU training several-fold
    torch.set_flush_denormal(True)

    from .generation.cli import is_generation_config

    if is_generation_config(argv):
        from .generation.module import ARModule

        LightningCLI(
            ARModule,
            args=args,
            trainer_defaults=_trainer_defaults(),
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
        return

    from .tokenizers.module import TokenizerModule

    LightningCLI(
        TokenizerModule,
        args=args,
        trainer_defaults=_trainer_defaults(),
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def _trainer_defaults() -> dict:
    """A log (stdout not a terminal) gets a plain progress line every few steps instead of the rich bar."""
    if sys.stdout.isatty():
        return {}
    from .tokenizers.callbacks import PrintProgress

    return {"enable_progress_bar": False, "callbacks": [PrintProgress()]}


def _tokens_command(argv: list[str]) -> None:
    import argparse

    from .tokenizers.images import save_grid
    from .tokenizers.tokens import load_tokens, save_tokens

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

    if args.command == "encode":
        images = _read_images(args.images)  # every file checked before any work
        model = _load_tokenizer(args.tokenizer)
        tensors = {}
        for name, (path, img) in images.items():
            img = _fit(img, args.size, model.downsample, path)
            tensors[name] = model.encode(img[None] * 2 - 1)[0]
        out = save_tokens(args.output, tensors, tokenizer=args.tokenizer, codebook_size=model.quantizer.codebook_size)
        print(f"wrote {len(tensors)} token maps to {out}")
    else:
        tokens = load_tokens(args.tokens)
        model = _load_tokenizer(args.tokenizer)
        tokens.check_codebook_size(model.quantizer.codebook_size, f"the tokenizer in {args.tokenizer}")
        images = {name: model.decode(idx[None]).clamp(-1, 1) for name, idx in tokens.items()}
        out = Path(args.output)
        for name, img in images.items():
            save_grid(img, out / f"{name}.png", rows=1)
        print(f"wrote {len(images)} images to {out}")


def _read_images(paths: list[str]) -> dict:
    """``stem -> (path, (3, H, W) tensor in [0, 1])``; an unreadable file or a repeated stem is an InputError."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from .tokenizers.images import to_rgb_tensor

    images = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise InputError(f"{path} does not exist or is not a file; {IMAGE_HINT}")
        try:
            with Image.open(path) as im:
                array = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise InputError(f"{path} is not an image that Pillow can read ({err}); {IMAGE_HINT}") from err
        if path.stem in images:
            raise InputError(f"{path} and {images[path.stem][0]} would both be stored as {path.stem!r}: rename one")
        images[path.stem] = (path, to_rgb_tensor(array))
    return images


def _load_tokenizer(path: str):
    from .quantizers.config import PretrainedFileError
    from .tokenizers import VQTokenizer

    try:
        return VQTokenizer.from_pretrained(path)
    except PretrainedFileError as err:
        raise PretrainedFileError(f"{err} ({TOKENIZER_HINT})") from err


def _fit(img, size, multiple, path=None):
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
        raise InputError(f"{path or 'image'} is {w}x{h}, smaller than the tokenizer's downsampling factor {multiple}")
    return img[:, :h2, :w2].clamp(0, 1)


if __name__ == "__main__":
    main()

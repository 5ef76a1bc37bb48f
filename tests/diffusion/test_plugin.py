"""tests for vqlib/diffusion/plugin.py (and pipeline.py): the diffusers backend, save/load, refusals."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from diffusers import DiTTransformer2DModel, PipelineQuantizationConfig
from diffusers.quantizers import auto
from safetensors.torch import load_file, save_file

import vqlib.diffusion as vd
from vqlib.kernels import VQLinear

from .tiny import TinyPixelPipeline, tiny_pipeline

ROOT = Path(__file__).resolve().parents[2]
LABELS = [1, 2, 3]


def _sample(pipe):
    return pipe(class_labels=LABELS, num_inference_steps=3, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny pipeline quantized by VQ4DiT along its own sampling path, saved; with its reference samples."""
    pipe = tiny_pipeline()
    report = vd.quantize_pipeline(pipe, vd.VQ4DiTConfig(vector_size=4, codebook_size=16, steps=3),
                                  class_labels=[0, 5], num_inference_steps=2)  # fmt: skip
    path = tmp_path_factory.mktemp("vqlib_pipe")
    pipe.save_pretrained(path)
    ref = _sample(pipe)
    save_file({"ref": ref.contiguous()}, str(path / "ref.safetensors"))
    return path, pipe, report, ref


def test_registered_in_diffusers_mappings():
    assert auto.AUTO_QUANTIZER_MAPPING["vqlib"] is vd.plugin.VQLibQuantizer
    assert auto.AUTO_QUANTIZATION_CONFIG_MAPPING["vqlib"] is vd.QuantConfig


def test_save_writes_compressed_tensors_and_the_config(saved):
    path, pipe, report, _ = saved
    config = json.loads((path / "transformer" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "vqlib" and config["method"] == "vq4dit"
    assert set(config["modules"]) == set(report.names)
    tensors = load_file(str(path / "transformer" / "diffusion_pytorch_model.safetensors"))
    name = report.names[0]
    assert tensors[f"{name}.codes"].dtype == torch.uint8 and f"{name}.weight" not in tensors
    # codes and codebooks round-trip through the file exactly
    layer = pipe.transformer.get_submodule(name)
    assert torch.equal(tensors[f"{name}.codes"], layer.codes) and torch.equal(tensors[f"{name}.codebook"], layer.codebook)
    fp = tiny_pipeline().transformer
    fp_bytes = sum(t.numel() * t.element_size() for t in fp.state_dict().values())
    assert sum(t.numel() * t.element_size() for t in tensors.values()) < fp_bytes


def test_component_from_pretrained_round_trips_codes_and_outputs(saved):
    path, pipe, report, _ = saved
    loaded = DiTTransformer2DModel.from_pretrained(path / "transformer")
    for name in report.names:
        a, b = pipe.transformer.get_submodule(name), loaded.get_submodule(name)
        assert isinstance(b, VQLinear)
        for key in ("codes", "codebook", "scales", "bias"):
            assert torch.equal(getattr(a, key), getattr(b, key)), (name, key)
    x = torch.randn(2, 1, 8, 8)
    t, y = torch.tensor([3, 50]), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(pipe.transformer(x, t, y).sample, loaded(x, t, y).sample)


def test_fresh_process_needs_the_import_and_then_is_bit_identical(saved):
    path = saved[0]
    script = textwrap.dedent(
        f"""
        import json, sys, torch
        from safetensors.torch import load_file
        from tests.diffusion.tiny import TinyPixelPipeline
        out = {{}}
        try:
            TinyPixelPipeline.from_pretrained({str(path)!r})
            out["without"] = "loaded"
        except ValueError as err:
            out["without"] = str(err)
        out["imported_before"] = "vqlib.diffusion" in sys.modules
        import vqlib.diffusion
        pipe = TinyPixelPipeline.from_pretrained({str(path)!r})
        x = pipe(class_labels={LABELS}, num_inference_steps=3, generator=torch.Generator().manual_seed(7))
        out["identical"] = torch.equal(x, load_file({str(path / "ref.safetensors")!r})["ref"])
        print(json.dumps(out))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "Unknown quantization type, got vqlib" in out["without"] and not out["imported_before"]
    assert out["identical"] is True


def test_newer_format_version_is_refused(saved, tmp_path):
    path = tmp_path / "newer"
    shutil.copytree(saved[0] / "transformer", path)
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"]["format_version"] = vd.FORMAT_VERSION + 1
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="newer vqlib.*upgrade vqlib"):
        DiTTransformer2DModel.from_pretrained(path)


def test_tampered_compressed_tensor_fails_its_checksum(saved, tmp_path):
    path = tmp_path / "tampered"
    shutil.copytree(saved[0] / "transformer", path)
    file = path / "diffusion_pytorch_model.safetensors"
    raw = bytearray(file.read_bytes())
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    key = saved[2].names[3] + ".codes"
    start, _ = header[key]["data_offsets"]
    raw[8 + size + start] ^= 0x01  # one bit of one code
    file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"{key}.*SHA-256 checksum"):
        DiTTransformer2DModel.from_pretrained(path)


def test_pipeline_quantization_config_data_free_accepted_calibrated_refused(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path)
    mapping = PipelineQuantizationConfig(quant_mapping={"transformer": vd.KMeansVQConfig(vector_size=4, codebook_size=16)})
    pipe = TinyPixelPipeline.from_pretrained(tmp_path, quantization_config=mapping)
    quantized = [n for n, m in pipe.transformer.named_modules() if isinstance(m, VQLinear)]
    assert len(quantized) == 14 and torch.isfinite(_sample(pipe)).all()
    calibrated = PipelineQuantizationConfig(quant_mapping={"transformer": vd.VQ4DiTConfig()})
    with pytest.raises(ValueError, match="quantize_pipeline"):
        TinyPixelPipeline.from_pretrained(tmp_path, quantization_config=calibrated)


def test_quantize_pipeline_bad_input():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match=r"no 'unet' model component.*\['transformer'\].*component="):
        vd.quantize_pipeline(pipe, vd.VQ4DiTConfig(), class_labels=[1], component="unet")
    with pytest.raises(ValueError, match="exactly one of prompts= .* or class_labels="):
        vd.quantize_pipeline(pipe, vd.VQ4DiTConfig())
    assert not any(isinstance(m, VQLinear) for m in pipe.transformer.modules())

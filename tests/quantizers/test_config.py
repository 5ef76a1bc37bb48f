"""One way to save and load (vqlib/quantizers/config.py): recorded constructor arguments,
``save_pretrained`` / ``from_pretrained`` with a format version and a SHA-256 of the weights."""

import copy
import json

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open

from vqlib.quantizers import FSQ, FVQ, ConfigMixin, PretrainedFileError, Quantizer, SimVQ, VectorQuantizer
from vqlib.quantizers.config import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME

from .conftest import CONFIGS, DIM

TRAINABLE = {
    **CONFIGS,
    "vq-ema-kmeans": lambda: VectorQuantizer(DIM, 32, init="kmeans", kmeans_batches=2, dead_code_threshold=0.5),
    "vq-ema-kmeans-cosine": lambda: VectorQuantizer(DIM, 16, metric="cosine", init="kmeans", kmeans_batches=1),
}


def train(q: Quantizer, steps: int = 5, seed: int = 0) -> Quantizer:
    """A few real optimiser steps, so every learned tensor (EMA, k-means, bridge, projections) has moved."""
    generator = torch.Generator().manual_seed(seed)
    params = list(q.parameters())
    opt = torch.optim.SGD(params, lr=0.5) if params else None
    q.train()
    for _ in range(steps):
        x = torch.randn(64, q.dim, generator=generator)
        out = q(x)
        loss = out.loss + (out.quantized - x).square().mean()
        if opt is not None and loss.requires_grad:
            opt.zero_grad()
            loss.backward()
            opt.step()
    return q


def files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---- round trips of every trainable quantizer ---------------------------------------


@pytest.mark.parametrize("name", sorted(TRAINABLE))
def test_save_pretrained_round_trip(name, tmp_path):
    torch.manual_seed(0)
    q = train(TRAINABLE[name]())
    q.save_pretrained(tmp_path / name)
    assert files(tmp_path / name) == [CONFIG_NAME, WEIGHTS_NAME]
    torch.manual_seed(1)  # a different random start: everything must come from the files
    loaded = Quantizer.from_pretrained(tmp_path / name)
    assert type(loaded) is type(q) and not loaded.training
    assert loaded.config == q.config
    state, loaded_state = q.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)

    q.eval()
    x = torch.randn(50, DIM) * 2
    out, again = q(x), loaded(x)
    assert torch.equal(again.indices, out.indices) and torch.equal(again.quantized, out.quantized)
    assert torch.equal(loaded.encode(x), q.encode(x))
    idx = q.encode(x)
    assert torch.equal(loaded.decode(idx), q.decode(idx))

    # and training goes on from the same state (EMA counts, k-means done, steps)
    q.train(), loaded.train()
    torch.manual_seed(2)
    q(x)
    torch.manual_seed(2)
    loaded(x)
    state, loaded_state = q.state_dict(), loaded.state_dict()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)


def test_trained_state_is_really_what_was_saved(tmp_path):
    """The round trip is not trivially true: the trained quantizer differs from a fresh one of the same config."""
    torch.manual_seed(0)
    for name in ("vq-ema-kmeans", "simvq", "fvq"):
        q = train(TRAINABLE[name]())
        fresh = Quantizer.from_config(q.config)
        differ = [k for k, v in q.state_dict().items() if not torch.equal(v, fresh.state_dict()[k])]
        assert differ, f"{name}: training changed nothing, so the round trip proves nothing"


def test_loaded_class_is_checked(tmp_path):
    FSQ([5, 5, 5], dim=DIM).save_pretrained(tmp_path)
    assert type(FSQ.from_pretrained(tmp_path)) is FSQ
    assert type(Quantizer.from_pretrained(tmp_path)) is FSQ
    with pytest.raises(PretrainedFileError, match="not a vqlib SimVQ"):
        SimVQ.from_pretrained(tmp_path)


def test_ifsq_bound_is_in_the_config(tmp_path):
    FSQ([17, 17, 17, 17], dim=DIM, bound="ifsq").save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["init_args"]["bound"] == "ifsq" and config["init_args"]["levels"] == [17, 17, 17, 17]
    assert FSQ.from_pretrained(tmp_path).bound == "ifsq"


def test_constructor_order_is_dim_then_codebook_size():
    # the shared vocabulary: (dim, codebook_size, ...) for every codebook quantizer; FSQ takes levels
    for cls, extra in ((VectorQuantizer, {}), (SimVQ, {}), (FVQ, {"hidden": 8, "heads": 2, "patch_size": 2})):
        q = cls(DIM, 16, **extra)
        assert (q.dim, q.codebook_size) == (DIM, 16), cls.__name__
        assert list(q.config["init_args"])[:2] == ["dim", "codebook_size"], cls.__name__
    assert list(FSQ([5, 5]).config["init_args"])[:2] == ["levels", "dim"]


# ---- refusing damaged or foreign folders ----------------------------------------------


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    q = train(VectorQuantizer(DIM, 32, init="kmeans", kmeans_batches=2))
    return q, q.save_pretrained(tmp_path / "vq")


def test_tampered_weights_are_refused(saved):
    _, d = saved
    data = bytearray((d / WEIGHTS_NAME).read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    (d / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(PretrainedFileError, match="checksum"):
        VectorQuantizer.from_pretrained(d)


def test_missing_or_broken_files_are_refused(saved, tmp_path):
    _, d = saved
    with pytest.raises(PretrainedFileError, match="not a folder"):
        VectorQuantizer.from_pretrained(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PretrainedFileError, match=f"holds no {CONFIG_NAME}"):
        VectorQuantizer.from_pretrained(empty)
    good = (d / CONFIG_NAME).read_text()
    (d / CONFIG_NAME).write_text(good[:-10])
    with pytest.raises(PretrainedFileError, match="not valid JSON"):
        VectorQuantizer.from_pretrained(d)
    (d / CONFIG_NAME).write_text(json.dumps({"class_path": "VectorQuantizer"}))
    with pytest.raises(PretrainedFileError, match="not a vqlib config"):
        VectorQuantizer.from_pretrained(d)
    (d / CONFIG_NAME).write_text(good)
    (d / WEIGHTS_NAME).unlink()
    with pytest.raises(PretrainedFileError, match="missing weights file"):
        VectorQuantizer.from_pretrained(d)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, "1", None])
def test_newer_or_malformed_version_is_refused(saved, version):
    _, d = saved
    meta = json.loads((d / CONFIG_NAME).read_text())
    assert meta["format_version"] == FORMAT_VERSION
    meta["format_version"] = version
    (d / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(PretrainedFileError, match=f"format version {version!r}; this vqlib reads up to {FORMAT_VERSION}"):
        VectorQuantizer.from_pretrained(d)


def test_config_with_unknown_argument_is_refused(saved):
    _, d = saved
    meta = json.loads((d / CONFIG_NAME).read_text())
    meta["init_args"]["metric"] = "hamming"
    (d / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(PretrainedFileError, match="metric must be 'l2' or 'cosine', got 'hamming'"):
        VectorQuantizer.from_pretrained(d)


# ---- writing ------------------------------------------------------------------------


class Toy(ConfigMixin, nn.Module):
    """A small artefact for the mechanism itself: tied weights, extra state, any argument."""

    def __init__(self, n: int = 4, tie: bool = True, note=None, extra=None):
        super().__init__()
        self.a = nn.Linear(n, n)
        self.b = nn.Linear(n, n)
        if tie:
            self.b.weight = self.a.weight
        self.extra = extra

    def get_extra_state(self):
        return self.extra

    def set_extra_state(self, state):
        self.extra = state


def test_non_json_argument_fails_before_anything_is_written(tmp_path):
    toy = Toy(note=torch.ones(2))
    with pytest.raises(TypeError, match=r"Toy.init_args.note is a Tensor, which a config cannot record as JSON"):
        toy.config
    with pytest.raises(TypeError, match="note is a Tensor"):
        toy.save_pretrained(tmp_path / "toy")
    assert not (tmp_path / "toy").exists() or files(tmp_path / "toy") == []
    nested = Toy(note={"ok": [1, 2.5, "x"], "bad": [object()]})
    with pytest.raises(TypeError, match=r"note\.bad\[0\] is a object"):
        nested.save_pretrained(tmp_path / "nested")


def test_extra_state_round_trips_as_json_and_must_be_json_safe(tmp_path):
    toy = Toy(extra={"fitted": True, "sizes": [3, 4]})
    toy.save_pretrained(tmp_path / "ok")
    meta = json.loads((tmp_path / "ok" / CONFIG_NAME).read_text())
    assert meta["extra_state"] == {"_extra_state": {"fitted": True, "sizes": [3, 4]}}
    assert Toy.from_pretrained(tmp_path / "ok").extra == {"fitted": True, "sizes": [3, 4]}
    bad = Toy()
    bad.extra = {"when": object()}  # fitted state, not a constructor argument
    with pytest.raises(TypeError, match="extra state"):
        bad.save_pretrained(tmp_path / "bad")
    assert not (tmp_path / "bad").exists() or files(tmp_path / "bad") == []


def test_atomic_write_leaves_no_temporary_files(tmp_path, monkeypatch):
    torch.manual_seed(0)
    toy = Toy()
    d = toy.save_pretrained(tmp_path / "toy")
    first = {name: (d / name).read_bytes() for name in files(d)}
    with torch.no_grad():
        toy.a.bias.add_(1.0)
    toy.save_pretrained(d)  # overwrite in place
    assert files(d) == [CONFIG_NAME, WEIGHTS_NAME]
    assert torch.equal(Toy.from_pretrained(d).a.bias, toy.a.bias)

    # a write that dies half-way leaves the previous files whole and no temporary file behind
    import safetensors.torch

    def dying_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", dying_save)
    before = {name: (d / name).read_bytes() for name in files(d)}
    assert before != first
    with pytest.raises(OSError, match="disk full"):
        toy.save_pretrained(d)
    assert files(d) == [CONFIG_NAME, WEIGHTS_NAME]
    assert {name: (d / name).read_bytes() for name in files(d)} == before


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    torch.manual_seed(0)
    toy = Toy()
    d = toy.save_pretrained(tmp_path / "toy")
    with safe_open(str(d / WEIGHTS_NAME), "pt") as f:
        stored = set(f.keys())
    assert stored == {"a.weight", "a.bias", "b.bias"}  # b.weight is a.weight
    assert json.loads((d / CONFIG_NAME).read_text())["tied"] == {"b.weight": "a.weight"}
    loaded = Toy.from_pretrained(d)
    assert loaded.b.weight is loaded.a.weight
    assert torch.equal(loaded.a.weight, toy.a.weight) and torch.equal(loaded.b.bias, toy.b.bias)
    # untied weights that happen to be equal are two tensors, stored twice
    untied = Toy(tie=False)
    with torch.no_grad():
        untied.b.weight.copy_(untied.a.weight)
    d2 = untied.save_pretrained(tmp_path / "untied")
    with safe_open(str(d2 / WEIGHTS_NAME), "pt") as f:
        assert {"a.weight", "b.weight"} <= set(f.keys())
    assert Toy.from_pretrained(d2).b.weight is not Toy.from_pretrained(d2).a.weight


class Window(ConfigMixin, nn.Module):
    def __init__(self, n: int = 8):
        super().__init__()
        whole = torch.arange(float(n))
        self.register_buffer("whole", whole)
        self.register_buffer("part", whole[2:5])  # a view into the same storage, not the same tensor


def test_overlapping_views_are_saved(tmp_path):
    w = Window()
    loaded = Window.from_pretrained(w.save_pretrained(tmp_path / "w"))
    assert torch.equal(loaded.part, w.part) and torch.equal(loaded.whole, w.whole)


def test_from_config_builds_an_untrained_copy():
    torch.manual_seed(0)
    q = train(SimVQ(DIM, 16, seed=3))
    rebuilt = Quantizer.from_config(copy.deepcopy(q.config))
    assert rebuilt.config == q.config
    assert torch.equal(rebuilt.basis, q.basis)  # the seed is an argument, so the frozen basis is rebuilt
    assert not torch.equal(rebuilt.codebook_proj.weight, q.codebook_proj.weight)


def test_misspelt_argument_names_the_class_and_its_arguments():
    with pytest.raises(TypeError, match=r"FSQ: .*'bownd'.*; it takes levels, dim, .*bound"):
        FSQ(levels=[8, 8], bownd="ifsq")


def test_missing_local_folder_is_not_taken_for_a_hub_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(PretrainedFileError, match="runs/demo is not a folder"):
        FSQ.from_pretrained("runs/demo")  # would otherwise try a hub download of the repo "runs/demo"

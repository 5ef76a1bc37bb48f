"""compress_model / decompress_model on swap_modules: selection, all-or-nothing, weight tying."""

import pytest
import torch
import torch.nn as nn

from vqlib.quantizers import LR2VQConv2d, LR2VQLinear, compress_model, compression_report, decompress_model


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 12),
        nn.ModuleDict({"a": nn.Linear(12, 12), "b": nn.Linear(12, 12)}),
    )


def _kinds(model):
    return {
        name: type(mod).__name__
        for name, mod in model.named_modules()
        if isinstance(mod, (nn.Linear, nn.Conv2d, LR2VQLinear, LR2VQConv2d))
    }


@pytest.mark.parametrize(
    "layers,exclude,want",
    [
        (nn.Linear, None, {"3", "4.a", "4.b"}),
        (["4.*"], None, {"4.a", "4.b"}),
        (None, ["0", "4.b"], {"3", "4.a"}),
        ([nn.Conv2d, "4.a"], None, {"0", "4.a"}),
    ],
)
def test_layers_by_type_pattern_and_name(layers, exclude, want):
    model = compress_model(_net(), vector_size=3, codebook_size=4, rank=2, layers=layers, exclude=exclude)
    compressed = {n for n, kind in _kinds(model).items() if kind.startswith("LR2VQ")}
    assert compressed == want
    assert {r.name for r in compression_report(model).layers} == want


def test_a_layer_that_cannot_be_compressed_leaves_the_model_untouched():
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = _kinds(model)
    with pytest.raises(ValueError, match=r"layer '0': vector_size=4 must divide in_channels/groups·kh·kw=27"):
        compress_model(model, vector_size=4, codebook_size=4, rank=2)  # 96 and 12 divide, 27 does not
    assert _kinds(model) == kinds
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_one_layer_in_two_places_and_two_layers_on_one_weight_stay_shared():
    torch.manual_seed(0)
    shared = nn.Linear(8, 8)
    twin = nn.Linear(8, 8, bias=False)
    twin.weight = shared.weight  # another module, the same weight parameter
    model = nn.Sequential(shared, nn.ReLU(), shared, twin)
    x = torch.randn(3, 8)
    compress_model(model, vector_size=4, codebook_size=4, rank=2)
    assert model[0] is model[2] and isinstance(model[0], LR2VQLinear)
    assert model[3].vq is model[0].vq and model[3].bias is None
    torch.testing.assert_close(model[3].weight, model[0].weight)
    report = compression_report(model)
    assert [r.name for r in report.layers] == ["0"]  # the shared codec counted once
    assert model[3](x).shape == (3, 8)

    decompress_model(model)
    assert type(model[0]) is nn.Linear and model[0] is model[2]
    assert model[3].weight is model[0].weight


def test_an_embedding_tied_to_the_head_is_reported():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(16, 8)
            self.head = nn.Linear(8, 16, bias=False)
            self.head.weight = self.embed.weight

    model = LM()
    with pytest.warns(UserWarning, match=r"\['embed.weight', 'head.weight'\] were tied"):
        compress_model(model, vector_size=4, codebook_size=4, rank=2)
    assert isinstance(model.head, LR2VQLinear) and type(model.embed) is nn.Embedding

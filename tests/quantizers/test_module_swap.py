import copy

import pytest
import torch
import torch.nn as nn

from vqlib.quantizers.module_swap import SwapReport, swap_modules


class Half(nn.Module):
    """A stand-in replacement: holds the old layer's parameters under the same names."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias) / 2


def halve(name, module):
    return Half(module) if type(module) is nn.Linear else None


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 8),
        nn.ReLU(),
        nn.Sequential(nn.Linear(8, 8), nn.Tanh()),
        nn.ModuleDict({"head": nn.Linear(8, 2), "aux": nn.Linear(8, 3)}),
    )


def test_swaps_in_place_and_reports_names_and_types():
    model = mlp()
    x = torch.randn(3, 4)
    first = model[0](x)
    report = swap_modules(model, halve)
    assert isinstance(report, SwapReport) and len(report) == 4
    assert report.names == ["0", "2.0", "3.head", "3.aux"]
    assert {(s.old_type, s.new_type) for s in report} == {(nn.Linear, Half)}
    assert all(type(m) is not nn.Linear for m in model.modules())
    assert isinstance(model[3]["head"], Half)
    torch.testing.assert_close(model[0](x), first / 2)


@pytest.mark.parametrize(
    "include,exclude,want",
    [
        (["2.0"], None, ["2.0"]),  # exact name
        ("3.*", None, ["3.head", "3.aux"]),  # pattern (the ModuleDict "3" itself is offered and left)
        ([nn.Linear], ["3.aux"], ["0", "2.0", "3.head"]),  # type, minus one name
        (None, ["?", "3.h*"], ["2.0", "3.aux"]),  # patterns in exclude
        (["0", "3.aux"], [nn.Linear], []),  # exclude wins
    ],
)
def test_include_and_exclude_by_name_pattern_and_type(include, exclude, want):
    model = mlp()
    offered = []

    def build(name, module):
        offered.append(name)
        return halve(name, module)

    assert swap_modules(model, build, include=include, exclude=exclude).names == want
    assert [n for n, m in model.named_modules() if isinstance(m, Half)] == want
    if include is None:
        assert "" not in offered  # the root is never offered


def test_outermost_first_and_children_of_a_replaced_module_are_not_offered():
    model = mlp()
    offered = []

    def build(name, module):
        offered.append(name)
        return nn.Identity() if name == "2" else None

    report = swap_modules(model, build)
    assert report.names == ["2"] and "2.0" not in offered and "2.1" not in offered
    assert offered.index("0") < offered.index("2") < offered.index("3.head")
    assert isinstance(model[2], nn.Identity)


def test_a_build_that_raises_leaves_the_model_untouched():
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    modules = list(model.modules())

    def build(name, module):
        if name == "3.aux":
            raise ValueError("no")
        return halve(name, module)

    with pytest.raises(ValueError, match="no"):
        swap_modules(model, build)
    assert list(model.modules()) == modules
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(TypeError, match=r"build\('0', ...\) returned a str; expected an nn.Module or None"):
        swap_modules(model, lambda name, module: "linear")
    assert list(model.modules()) == modules


def test_one_module_under_two_parents_stays_one_module():
    shared = nn.Linear(4, 4)
    model = nn.ModuleDict({"a": nn.Sequential(shared), "b": nn.Sequential(shared, nn.ReLU())})
    calls = []

    def build(name, module):
        calls.append(name)
        return halve(name, module)

    report = swap_modules(model, build, include=nn.Linear)
    assert calls == ["a.0"]  # built once
    assert report.swapped[0].names == ("a.0", "b.0")
    assert model["a"][0] is model["b"][0] and isinstance(model["a"][0], Half)


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.body = nn.Linear(6, 6)
        self.lm_head = nn.Linear(6, 10, bias=False)
        self.lm_head.weight = self.embed.weight  # tied embeddings

    def forward(self, tokens):
        return self.lm_head(torch.tanh(self.body(self.embed(tokens))))


def test_a_parameter_shared_between_modules_stays_shared():
    model = TiedLM()
    report = swap_modules(model, halve, include=["lm_head"])
    assert report.names == ["lm_head"] and not report.untied
    assert isinstance(model.lm_head, Half)
    assert model.lm_head.weight is model.embed.weight  # still one parameter
    with torch.no_grad():
        model.embed.weight.add_(1.0)
    torch.testing.assert_close(model.lm_head.weight, model.embed.weight)
    assert len(list(model.parameters())) == 3  # embed/lm_head weight once, body weight and bias


def test_a_tie_that_cannot_be_kept_is_reported_with_a_warning():
    model = TiedLM()
    with pytest.warns(UserWarning, match=r"\['embed.weight', 'lm_head.weight'\] were tied"):
        report = swap_modules(model, lambda name, module: nn.Identity() if name == "lm_head" else None)
    assert report.untied == [("embed.weight", "lm_head.weight")]


def test_bad_selectors():
    model = mlp()
    with pytest.raises(ValueError, match=r"include names 'head', which is no submodule of the model"):
        swap_modules(model, halve, include=["head"])
    with pytest.raises(ValueError, match=r"exclude names '4'"):
        swap_modules(model, halve, exclude="4")
    with pytest.raises(ValueError, match=r"the model itself cannot be swapped in place"):
        swap_modules(model, halve, include=[""])
    with pytest.raises(TypeError, match=r"include takes module names .* and nn.Module types, got 3"):
        swap_modules(model, halve, include=[3])
    with pytest.raises(TypeError, match="needs an nn.Module"):
        swap_modules("model", halve)
    assert not any(isinstance(m, Half) for m in model.modules())
    assert len(swap_modules(model, halve, include="3.z*")) == 0  # a pattern may match nothing

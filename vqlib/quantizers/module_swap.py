"""Swap submodules of any ``nn.Module`` in place: the one model-surgery routine of vqlib.

``swap_modules(model, build, include=..., exclude=...)`` offers every submodule that the
filters let through to ``build(name, module)``, which returns its replacement or ``None``
to leave it. LR²VQ's :func:`~vqlib.quantizers.compress_model`, ``vqlib.kernels.quantize_model``
and the diffusion part's ``quantize_`` are built on it (torchao's ``quantize_`` is the model).

What it guarantees:

* **all or nothing**: every replacement is built (and checked to be an ``nn.Module``)
  before the first one goes in, so a ``build`` that raises leaves the model untouched;
* **weight tying kept**: a module reachable under several names (one object, two
  parents) is built once and the replacement goes under every name; a parameter shared
  between modules (tied embedding and LM head) stays shared when the replacement holds a
  parameter under the same relative name and shape: every module that held the old one
  then holds the new one. A tie that cannot be kept (the replacement has no such
  parameter while another module still holds the old one) is reported in
  :attr:`SwapReport.untied` with a warning, never dropped silently;
* **outermost first**: modules are offered parents before children; once a module is
  replaced its old children are not offered.

The root module itself is never offered (it cannot be replaced in place).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch.nn as nn

__all__ = ["SwapReport", "SwappedModule", "swap_modules"]

Selector = str | type
_PATTERN_CHARS = "*?["


@dataclass(frozen=True)
class SwappedModule:
    """One module replaced: every qualified name it had (one module object, possibly several parents)."""

    names: tuple[str, ...]
    old_type: type
    new_type: type

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass
class SwapReport:
    """What :func:`swap_modules` replaced (in ``named_modules`` order) and the parameter ties it could not keep."""

    swapped: list[SwappedModule] = field(default_factory=list)
    #: each entry: the qualified parameter names that shared one parameter and no longer do
    untied: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [name for s in self.swapped for name in s.names]

    def __len__(self) -> int:
        return len(self.swapped)

    def __iter__(self):
        return iter(self.swapped)


def _selectors(value: Selector | Iterable[Selector] | None, what: str) -> list[Selector] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, (str, type)) else list(value)
    for item in items:
        if isinstance(item, type) and issubclass(item, nn.Module):
            continue
        if not isinstance(item, str):
            raise TypeError(
                f"{what} takes module names (exact or fnmatch patterns) and nn.Module types, got {item!r}"
            )
    return items


def _is_pattern(name: str) -> bool:
    return any(c in name for c in _PATTERN_CHARS)


def _matches(selectors: list[Selector], names: tuple[str, ...], module: nn.Module) -> bool:
    for sel in selectors:
        if isinstance(sel, type):
            if isinstance(module, sel):
                return True
        elif any(name == sel or (_is_pattern(sel) and fnmatch.fnmatchcase(name, sel)) for name in names):
            return True
    return False


def _under(name: str, prefixes: set[str]) -> bool:
    parts = name.split(".")
    return any(".".join(parts[:i]) in prefixes for i in range(1, len(parts)))


def swap_modules(
    model: nn.Module,
    build: Callable[[str, nn.Module], nn.Module | None],
    include: Selector | Iterable[Selector] | None = None,
    exclude: Selector | Iterable[Selector] | None = None,
) -> SwapReport:
    """Replace submodules of ``model`` in place by what ``build(name, module)`` returns.

    Args:
        build: called once per distinct module object that the filters let through, with its
            first qualified name; returns the replacement, or ``None`` (or the module itself)
            to leave it and offer its children instead.
        include: names (exact qualified names as in ``named_modules``, or fnmatch patterns such
            as ``"blocks.*.mlp.fc?"``) and/or ``nn.Module`` types (matched with ``isinstance``);
            ``None`` offers every submodule. A module reachable under several names matches when
            any of them does.
        exclude: the same kinds of selectors; an excluded module is not offered (its children
            still are).

    Returns:
        A :class:`SwapReport` of what was replaced and any parameter tie that could not be kept.

    An exact name (no ``*?[``) in ``include`` or ``exclude`` that names no submodule is an error,
    so a typo never silently swaps nothing.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"swap_modules needs an nn.Module, got {type(model).__name__}")
    inc, exc = _selectors(include, "include"), _selectors(exclude, "exclude")

    # every name of every module object (a shared module has several), in pre-order
    names_of: dict[int, list[str]] = {}
    objects: dict[int, nn.Module] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        if name:
            names_of.setdefault(id(mod), []).append(name)
            objects[id(mod)] = mod
    all_names = {name for names in names_of.values() for name in names}
    for what, sels in (("include", inc), ("exclude", exc)):
        for sel in sels or ():
            if isinstance(sel, str) and not _is_pattern(sel) and sel not in all_names:
                hint = "the model itself cannot be swapped in place" if sel == "" else "check the spelling"
                raise ValueError(f"{what} names {sel!r}, which is no submodule of the model ({hint})")

    # 1. build every replacement; nothing in the model changes yet
    built: dict[int, nn.Module] = {}
    replaced: set[str] = set()
    for ident, names in names_of.items():
        live = tuple(n for n in names if not _under(n, replaced))
        if not live:
            continue
        module = objects[ident]
        if inc is not None and not _matches(inc, live, module):
            continue
        if exc is not None and _matches(exc, live, module):
            continue
        new = build(live[0], module)
        if new is None or new is module:
            continue
        if not isinstance(new, nn.Module):
            raise TypeError(f"build({live[0]!r}, ...) returned a {type(new).__name__}; expected an nn.Module or None")
        built[ident] = new
        replaced.update(live)
    if not built:
        return SwapReport()

    # 2. plan the parameter ties: which slots (module, attribute) hold each shared parameter
    slots: dict[int, list[tuple[str, nn.Module, str]]] = {}
    params = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for attr, p in mod._parameters.items():
            if p is not None:
                params[id(p)] = p
                slots.setdefault(id(p), []).append((f"{mod_name}.{attr}" if mod_name else attr, mod, attr))
    shared = {pid: s for pid, s in slots.items() if len({(id(m), a) for _, m, a in s}) > 1}

    # 3. swap (plain setattr on the parents: nothing here can fail half way)
    report = SwapReport()
    built_under = {}  # replaced name -> its replacement
    for ident, new in built.items():
        # a name under another replaced module belongs to the old tree, which is going away
        live = tuple(n for n in names_of[ident] if n in replaced and not _under(n, replaced))
        if not live:
            continue
        for name in live:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, new)
            built_under[name] = new
        report.swapped.append(SwappedModule(live, type(objects[ident]), type(new)))

    # 4. re-tie: a shared parameter whose slot moved into a replacement under the same relative name
    for pid, group in shared.items():
        targets, lost, kept = [], [], []
        for qual, mod, attr in group:
            owner = next((n for n in built_under if qual.startswith(n + ".")), None)
            if owner is None:
                kept.append((qual, mod, attr))
                continue
            new = built_under[owner]
            rel = qual[len(owner) + 1 :]
            sub, _, leaf = rel.rpartition(".")
            try:
                holder = new.get_submodule(sub)
            except AttributeError:
                holder = None
            old = params[pid]
            q = holder._parameters.get(leaf) if holder is not None else None
            if q is not None and q.shape == old.shape and q.dtype == old.dtype:
                targets.append((qual, holder, leaf, q))
            else:
                lost.append(qual)
        if not targets:
            if lost and kept:
                report.untied.append(tuple(q for q, _, _ in group))
            continue
        tie = targets[0][3]
        for _, holder, leaf, _ in targets:
            setattr(holder, leaf, tie)
        for _, mod, attr in kept:
            setattr(mod, attr, tie)
        if lost:
            report.untied.append(tuple(q for q, _, _ in group))
    for names in report.untied:
        warnings.warn(
            f"parameters {list(names)} were tied (one shared parameter) and are not all any more: the replacement "
            "has no parameter of that name and shape; exclude one of them to keep the tie",
            stacklevel=2,
        )
    return report

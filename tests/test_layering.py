"""The layout is the architecture: import rules between vqlib's parts, read with ``ast``.

* ``vqlib/quantizers/`` (the ground floor) imports nothing from a part above it;
* the parts above (``tokenizers``, ``anns``, ``kernels``, ``diffusion``,
  ``generation``) do not import each other, except ``diffusion -> kernels`` and
  ``generation -> tokenizers``; the top-level ``vqlib/cli.py`` and
  ``vqlib/__init__.py`` may import any part;
* no module outside ``vqlib/quantizers/`` imports a ``_private`` name (or a
  ``_private`` module) from it, nor reads one off an imported quantizers module:
  a part above uses the seams the ground floor publishes.

Every import statement counts, wherever it is (module level, inside a function,
under ``if TYPE_CHECKING``), absolute (``vqlib.x``) or relative (``..x``).
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

GROUND = "quantizers"
UPPER = ("tokenizers", "anns", "kernels", "diffusion", "generation")
TOP = "cli"  # vqlib/cli.py: the command line may import any part
ALLOWED = {("diffusion", "kernels"), ("generation", "tokenizers")}

VQLIB = Path(__file__).resolve().parents[1] / "vqlib"


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: [{self.rule}] {self.message}"


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "vqlib.anns.ivf_saq"
    line: int
    target: str  # the imported module, e.g. "vqlib.quantizers.saq"
    names: tuple[str, ...]  # names taken from it ("from target import a, b"); () for "import target"


def module_names(root: Path, package: str) -> dict[str, Path]:
    """``{"pkg.sub.mod": path}`` for every ``.py`` file under the package folder ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def read_imports(root: Path, package: str) -> tuple[list[Import], dict[str, Path]]:
    modules = module_names(root, package)
    found = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.append(Import(name, node.lineno, alias.name, ()))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    # "from ..x import y" in pkg.a.b: the package of b, then up level - 1
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    if node.level - 1 >= len(base):
                        raise ValueError(f"{path}:{node.lineno}: relative import beyond the top-level package")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                names = tuple(alias.name for alias in node.names)
                # "from pkg import sub" imports the module pkg.sub: record it as such
                subs = tuple(n for n in names if f"{target}.{n}" in modules)
                for sub in subs:
                    found.append(Import(name, node.lineno, f"{target}.{sub}", ()))
                rest = tuple(n for n in names if n not in subs)
                if rest or not subs:
                    found.append(Import(name, node.lineno, target, rest))
    return found, modules


def part_of(module: str, package: str) -> str | None:
    """The part a module belongs to: a sub-package name, ``"cli"`` for the top ``cli.py``, else None."""
    parts = module.split(".")
    if parts[0] != package or len(parts) < 2:
        return None
    return parts[1]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def check_layering(root: Path, package: str = "vqlib") -> list[Violation]:
    """Every import in the package folder ``root`` that breaks a layering rule."""
    imports, modules = read_imports(root, package)
    violations = []
    for imp in imports:
        src, dst = part_of(imp.module, package), part_of(imp.target, package)
        if dst is None or src == dst:
            continue
        if src == GROUND and (dst in UPPER or dst == TOP):
            violations.append(
                Violation(imp.module, imp.line, "ground-floor", f"{package}/{GROUND}/ imports {imp.target} (a part above it)")
            )
        elif src in UPPER and (dst in UPPER or dst == TOP) and (src, dst) not in ALLOWED:
            violations.append(Violation(imp.module, imp.line, "sideways", f"{src} imports {imp.target}"))
        if dst == GROUND and src != GROUND:
            below = imp.target.split(".")[2:]
            private = [p for p in below if _private(p)] + [n for n in imp.names if _private(n)]
            if private:
                violations.append(
                    Violation(
                        imp.module, imp.line, "private", f"imports private {', '.join(private)} from {imp.target}"
                    )
                )
    violations += _private_attribute_reads(imports, modules, package)
    return violations


def _private_attribute_reads(imports: list[Import], modules: dict[str, Path], package: str) -> list[Violation]:
    """``saq._plan`` where ``saq`` is a quantizers module bound by ``import``/``from ... import``."""
    ground = f"{package}.{GROUND}"
    violations = []
    by_module: dict[str, list[Import]] = {}
    for imp in imports:
        by_module.setdefault(imp.module, []).append(imp)
    for name, path in modules.items():
        if part_of(name, package) == GROUND:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        bound = {}  # local alias -> quantizers module it names
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == ground or alias.name.startswith(ground + "."):
                        bound[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom):
                for imp in by_module.get(name, []):
                    if imp.line == node.lineno and not imp.names and imp.target.startswith(ground):
                        local = imp.target.rsplit(".", 1)[1]
                        for alias in node.names:
                            if alias.name == local:
                                bound[alias.asname or alias.name] = imp.target
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                owner = _dotted(node.value)
                if owner in bound:
                    violations.append(
                        Violation(name, node.lineno, "private", f"reads private {node.attr} of {bound[owner]}")
                    )
    return violations


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        owner = _dotted(node.value)
        return f"{owner}.{node.attr}" if owner else None
    return None


# ---- vqlib itself ---------------------------------------------------------------


@pytest.fixture(scope="module")
def vqlib_violations() -> list[Violation]:
    return check_layering(VQLIB)


def test_the_checker_sees_vqlib(vqlib_violations):
    imports, modules = read_imports(VQLIB, "vqlib")
    assert {"vqlib.quantizers.base", "vqlib.anns.ivf_saq", "vqlib.tokenizers.model", "vqlib.cli"} <= set(modules)
    # sanity: the imports that exist today are seen, including one inside a function
    edges = {(i.module, i.target) for i in imports}
    assert ("vqlib.tokenizers.model", "vqlib.quantizers") in edges
    assert ("vqlib.cli", "vqlib.tokenizers.module") in edges  # imported inside main's helpers


@pytest.mark.parametrize("rule", ["ground-floor", "sideways", "private"])
def test_vqlib_follows_the_layering_rule(vqlib_violations, rule):
    broken = [str(v) for v in vqlib_violations if v.rule == rule]
    assert not broken, "layering rule broken:\n" + "\n".join(broken)


# ---- the checker on small synthetic packages ---------------------------------------

CLEAN = {
    "__init__.py": "from . import quantizers\n",
    "io.py": "import os\n",
    "cli.py": "from .anns import Index\nfrom .tokenizers import Tok\nfrom .kernels import k\n",
    "quantizers/__init__.py": "from .saq import SAQ\n",
    "quantizers/saq.py": "from ..io import atomic_write\nclass SAQ: pass\ndef _plan(): pass\n",
    "anns/__init__.py": "from ..quantizers import SAQ\nclass Index: pass\n",
    "anns/flat.py": "import pkg.quantizers.saq as saq\nx = saq.SAQ\n",
    "tokenizers/__init__.py": "from pkg.quantizers import SAQ\nclass Tok: pass\n",
    "kernels/__init__.py": "def k(): pass\n",
    "diffusion/__init__.py": "from ..kernels import k\nfrom ..quantizers.saq import SAQ\n",
    "generation/__init__.py": "def f():\n    from pkg.tokenizers import Tok\n    return Tok\n",
}


def write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_clean_package_passes(tmp_path):
    assert check_layering(write_package(tmp_path, CLEAN), "pkg") == []


BROKEN = {
    "ground floor, absolute, inside a function": (
        "quantizers/saq.py",
        "class SAQ: pass\ndef f():\n    import pkg.tokenizers\n",
        "ground-floor",
    ),
    "ground floor imports the cli": ("quantizers/saq.py", "from ..cli import main\nclass SAQ: pass\n", "ground-floor"),
    "sideways, relative": ("anns/flat.py", "from ..kernels import k\n", "sideways"),
    "sideways, from the parent package": ("anns/flat.py", "from .. import tokenizers\n", "sideways"),
    "kernels -> diffusion is not the allowed direction": ("kernels/__init__.py", "from ..diffusion import x\n", "sideways"),
    "a part imports the cli": ("tokenizers/__init__.py", "from pkg.cli import main\nclass Tok: pass\n", "sideways"),
    "private name": ("anns/flat.py", "from ..quantizers.saq import SAQ, _plan\n", "private"),
    "private module": ("tokenizers/model.py", "from pkg.quantizers._impl import thing\n", "private"),
    "private attribute of an imported module": ("anns/flat.py", "from ..quantizers import saq\nsaq._plan()\n", "private"),
    "private attribute via import as": ("anns/flat.py", "import pkg.quantizers.saq as s\ny = s._plan\n", "private"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_rule_is_reported(tmp_path, case):
    rel, text, rule = BROKEN[case]
    root = write_package(tmp_path, {**CLEAN, rel: text})
    violations = check_layering(root, "pkg")
    module = "pkg." + rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    assert [(v.module, v.rule) for v in violations] == [(module, rule)], violations


def test_violation_names_module_line_and_target(tmp_path):
    root = write_package(tmp_path, {**CLEAN, "anns/flat.py": "import os\n\nfrom ..kernels import k\n"})
    [v] = check_layering(root, "pkg")
    assert str(v) == "pkg.anns.flat:3: [sideways] anns imports pkg.kernels"

"""The package's layers (docs/ARCHITECTURE.md, "What may import what"): every import of a
``cxrsynth`` module, function-level ones included, goes to the module's own package or a lower layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "cxrsynth"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("fsutil",),
    ("data", "dicom_export"),
    ("model",),
    ("config", "plugins"),
    ("runfolder",),
    ("train",),
    ("dp",),
    ("sample",),
    ("evaluate",),
    ("audit",),
    ("release", "report"),
    ("demo",),
    ("cli", "__main__"),
)
LAYER_OF = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def top_package(module: str) -> str:
    """``cxrsynth.audit.runner`` → ``audit``; ``cxrsynth`` itself → ``cxrsynth``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    """The dotted module name of a source file of the package at ``root``."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute import of a ``cxrsynth`` module in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}:{node.lineno}: relative import (use absolute cxrsynth.* imports)")
    return [(line, name) for line, name in found if name == "cxrsynth" or name.startswith("cxrsynth.")]


def layer_violations(root: Path = PACKAGE_ROOT) -> list[str]:
    """Every import in the package at ``root`` that climbs to a higher layer, as
    ``file:line: a (layer i) imports b (layer j)``."""
    violations = []
    for path in sorted(root.rglob("*.py")):
        source = top_package(module_name(path, root))
        for line, name in imported_modules(path):
            target = top_package(name)
            if target == source:
                continue
            if source not in LAYER_OF or target not in LAYER_OF:
                violations.append(f"{path}:{line}: {source} or {target} has no layer: add it to LAYERS and the docs")
            elif LAYER_OF[target] > LAYER_OF[source]:
                violations.append(f"{path.relative_to(root)}:{line}: {source} (layer {LAYER_OF[source]}) "
                                  f"imports {name} (layer {LAYER_OF[target]})")
    return violations


def test_every_import_goes_to_the_same_or_a_lower_layer() -> None:
    assert layer_violations() == []


def test_every_top_level_module_and_package_has_a_layer() -> None:
    present = {path.stem for path in PACKAGE_ROOT.glob("*.py")} | {
        path.parent.name for path in PACKAGE_ROOT.glob("*/__init__.py")}
    assert present - {"__init__"} == set(LAYER_OF)


def test_the_architecture_document_lists_the_same_layers() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    for level, packages in enumerate(LAYERS):
        row = next((line for line in text.splitlines() if line.startswith(f"| {level} |")), None)
        assert row is not None, f"layer {level} missing from {ARCHITECTURE}"
        assert all(f"`{package}`" in row for package in packages), (level, row)


@pytest.mark.parametrize("source, target", [("train", "dp"), ("runfolder", "audit"), ("data", "cli")])
def test_a_climbing_import_is_reported_even_inside_a_function(tmp_path: Path, source: str, target: str) -> None:
    package = tmp_path / "cxrsynth"
    (package / source).mkdir(parents=True)
    (package / source / "__init__.py").write_text(
        f"import cxrsynth.errors\n\ndef f():\n    from cxrsynth.{target}.x import y\n    return y\n")
    assert layer_violations(package) == [
        f"{source}/__init__.py:4: {source} (layer {LAYER_OF[source]}) imports cxrsynth.{target}.x (layer {LAYER_OF[target]})"]

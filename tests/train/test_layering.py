"""The training loop never depends on DP: ``train/`` imports nothing of ``dp/`` (``dp/`` builds on ``train/``)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import cxrsynth.train

TRAIN_DIR = Path(cxrsynth.train.__file__).parent
DP_MODULE = re.compile(r"^cxrsynth\.dp(\.|:|$)")


def _dp_references(path: Path) -> list[str]:
    """Each import of ``cxrsynth.dp`` in ``path`` (absolute or relative), and each string naming a dp module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against cxrsynth.train
                base = ["cxrsynth", "train"][: max(0, 3 - node.level)]
                names = [".".join([*base, node.module or ""]).rstrip(".")]
                names += [f"{names[0]}.{alias.name}" for alias in node.names]
            else:
                names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]  # importlib.import_module("cxrsynth.dp...") would hide the import
        found += [f"{path.name}:{node.lineno}: {name}" for name in names if DP_MODULE.match(name)]
    return found


def test_train_package_never_imports_dp() -> None:
    sources = sorted(TRAIN_DIR.glob("*.py"))
    assert len(sources) >= 8  # the folder was found
    offending = [ref for path in sources for ref in _dp_references(path)]
    assert offending == [], "train/ must not import cxrsynth.dp (plug in through cxrsynth.train.privacy):\n" + \
        "\n".join(offending)


def test_the_check_sees_each_form_of_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import cxrsynth.dp\nfrom cxrsynth.dp.training import x\nfrom ..dp import y\n"
                      "from .. import dp\nimport importlib\nimportlib.import_module('cxrsynth.dp.training')\n"
                      "'''Docstrings may name cxrsynth.dp in prose.'''\n", encoding="utf-8")
    assert sorted({int(ref.split(":")[1]) for ref in _dp_references(sample)}) == [1, 2, 3, 4, 6]


def test_importing_train_loads_no_dp_module() -> None:
    code = "import sys, cxrsynth.train; print(sorted(m for m in sys.modules if m.startswith('cxrsynth.dp')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

"""The package's floors import only downward (.importlinter, ARCHITECTURE.md), and no ftjax import
hides inside a function to dodge a cycle."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter over the `ftjax` package found at `root` (the repository or a copy)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_floors_import_only_downward():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(REPO / "ftjax", tmp_path / "ftjax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path)
    models_config = tmp_path / "ftjax" / "models" / "config.py"
    models_config.write_text(models_config.read_text() + "\nimport ftjax.train.step  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "ftjax.models.config -> ftjax.train.step" in result.stdout, result.stdout


def test_no_ftjax_import_inside_a_function():
    """The CLI may import a subcommand lazily (start-up time); nothing else may."""
    hidden = []
    for path in sorted((REPO / "ftjax").rglob("*.py")):
        if path.relative_to(REPO / "ftjax").parts[0] in ("commands", "cli.py"):
            continue
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""] if not node.level else ["ftjax"]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                if any(name.split(".")[0] == "ftjax" for name in names):
                    hidden.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not hidden, hidden

"""The architecture as a checked contract: the import-linter contracts in pyproject.toml hold, and break on a
wrong import; only distributed.py touches torch.distributed; no test module imports another."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from helpers_launch import REPO, launch_env

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACTS = {
    "forbidden": "The model, the losses, the gradient cache and packing know nothing of engines or ranks",
    "protected": "Only the engine (and the checkpoint's offline conversion) imports DeepSpeed and accelerate",
    "acyclic": "No import cycles between the modules of any package",
}


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH=root: the package analysed is the one under root, not the installed one.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env=launch_env(PYTHONPATH=str(root)), timeout=120)


def test_import_contracts_hold():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    for name in CONTRACTS.values():
        assert " ".join(name.split()) in " ".join(proc.stdout.split()), name


def test_each_contract_breaks_on_a_wrong_import(tmp_path):
    shutil.copytree(REPO / "dist_lacl", tmp_path / "dist_lacl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    wrong = {"losses.py": "from . import distributed\n",      # the losses reach for ranks
             "trainer.py": "import deepspeed\n",              # DeepSpeed outside the engine
             "objective.py": "from . import trainer\n"}       # a cycle: trainer -> objective -> trainer
    for name, line in wrong.items():
        path = tmp_path / "dist_lacl" / name
        path.write_text(path.read_text() + line)
    proc = lint_imports(tmp_path)
    out = " ".join(proc.stdout.split())
    assert proc.returncode != 0
    for name in CONTRACTS.values():
        assert f"{' '.join(name.split())} BROKEN" in out, name


def _imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every import statement in a file, and every `torch.distributed` attribute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                (node.value.id, node.attr) == ("torch", "distributed"):
            found.append((node.lineno, "torch.distributed"))
    return found


def test_only_distributed_py_calls_torch_distributed():
    offenders = [f"{path.relative_to(REPO)}:{line}" for path in sorted((REPO / "dist_lacl").rglob("*.py"))
                 if path.name != "distributed.py" or path.parent.name != "dist_lacl"
                 for line, name in _imports_of(path) if name == "torch.distributed" or
                 name.startswith("torch.distributed.")]
    assert offenders == []


def test_no_test_module_imports_another():
    tests = REPO / "tests"
    test_modules = {p.stem for p in tests.glob("test_*.py")}
    offenders = [f"{path.relative_to(REPO)}:{line} imports {name}"
                 for path in sorted(tests.rglob("*.py")) for line, name in _imports_of(path)
                 if name.split(".")[0] in test_modules]
    assert offenders == []

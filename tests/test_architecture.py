"""The import rules of docs/architecture.md, read from the source of every module.

Each rule names who may not import whom. Imports inside functions count as much as those at
the top of a module: a backend imported lazily is still a backend.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import pcamflow

SRC = Path(pcamflow.__file__).parent

BACKENDS = ("pcamflow.local", "pcamflow.sagemaker")
AWS = ("pcamflow.sagemaker", "boto3", "botocore", "sagemaker", "s3transfer")
HEAVY = ("torch", "optuna", "fastapi", "uvicorn", "starlette", "safetensors", "psutil")
COMMAND_LINE = ("pcamflow.commands", "pcamflow.cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import in ``path``, relative ones resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:  # "from pcamflow import local" imports a module too
                yield node.lineno, f"{base}.{alias.name}"


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _is_core(module: str) -> bool:
    return not _within(module, (*BACKENDS, *COMMAND_LINE))


def _violations(applies, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in _modules():
        module = _module_name(path)
        if not applies(module):
            continue
        for line, name in _imports(path):
            if _within(name, forbidden):
                found.append(f"{path.relative_to(SRC.parent)}:{line} imports {name}")
    return found


def test_every_module_is_read() -> None:
    names = {_module_name(p) for p in _modules()}
    assert {"pcamflow.config", "pcamflow.local.training.engine", "pcamflow.cli",
            "pcamflow.sagemaker.localmode.training"} <= names


def test_local_mode_is_where_the_sagemaker_backend_meets_the_local_one() -> None:
    """The rule above is not empty: local mode does import the local backend."""
    found = _violations(lambda m: _within(m, ("pcamflow.sagemaker.localmode",)),
                        ("pcamflow.local",))
    assert any("localmode/training.py" in line for line in found)


@pytest.mark.parametrize(
    ("rule", "applies", "forbidden"),
    [
        ("the core never imports a backend", _is_core, BACKENDS),
        ("the core never imports torch, optuna or the web server", _is_core, HEAVY),
        ("the core never imports AWS code", _is_core, AWS),
        ("the local backend never imports AWS code",
         lambda m: _within(m, ("pcamflow.local",)), AWS),
        ("of the SageMaker backend, only local mode imports the local backend",
         lambda m: _within(m, ("pcamflow.sagemaker",))
         and not _within(m, ("pcamflow.sagemaker.localmode",)), ("pcamflow.local",)),
        ("stages and libraries never import the command line",
         lambda m: not _within(m, COMMAND_LINE), COMMAND_LINE),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_import_rule(rule: str, applies, forbidden: tuple[str, ...]) -> None:
    assert _violations(applies, forbidden) == [], rule


def test_the_rules_catch_a_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself: a core module importing the local backend is reported."""
    fake = tmp_path / "pcamflow"
    (fake / "local").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "local" / "__init__.py").write_text("")
    (fake / "core.py").write_text("def f():\n    from .local import thing\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    assert _violations(_is_core, BACKENDS) == ["pcamflow/core.py:2 imports pcamflow.local",
                                              "pcamflow/core.py:2 imports pcamflow.local.thing"]

"""The code's shape, held by tests (docs/ARCHITECTURE.md "Rules the layout keeps").

- No function over 120 lines and no class over 400 lines in hub/ and tools/;
  the failure names the offenders, and the largest of each is reported below.
- No import inside a function in hub/, tools/ and protocol/, except an optional
  or heavy dependency that only one path needs; each such import says why on
  its own line with a ``# lazy: <reason>`` comment.

The direction of imports between packages is import-linter's job
(pyproject.toml, `lint-imports` in make lint).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools.base.paths import ROOT

pytestmark = pytest.mark.unit

MAX_FUNCTION_LINES = 120
MAX_CLASS_LINES = 400
# What a function may import lazily: dependencies of an optional extra, or of
# a single command (top-level module names, or a module of this project).
LAZY_ALLOWED = (
    "onnxruntime",  # the ONNX tier, only to score
    "sklearn",  # the train extra
    "onnx",  # the train extra
    "serial",  # pyserial, with mpremote: only to reach a board
    "mpremote",
    "micropython_run",  # the MicroPython wheel's in-process runner
    "hub.daemon",  # the web stack, only for `aiot hub run`
    "hub.link.embedded",  # amqtt, only in embedded-broker mode
    "mfusepy",  # libfuse3, only in the lazy file system's process (tools/lab/lazyfs.py)
    "torch",  # the finetune extra (aiot models finetune)
    "transformers",
    "peft",
    "gguf",
    "tools.ml.finetune",  # the finetune extra's code, only for that command
)
CODE = ("hub", "tools", "protocol")
SKIP = ("tools/mpy", "protocol/generated")  # MicroPython scripts; generated code


@dataclass(frozen=True, slots=True)
class Unit:
    where: str
    name: str
    lines: int

    def __str__(self) -> str:
        return f"{self.where} {self.name} ({self.lines} lines)"


def _files(roots: tuple[str, ...]) -> list[Path]:
    out = []
    for root in roots:
        for p in sorted((ROOT / root).rglob("*.py")):
            rel = p.relative_to(ROOT).as_posix()
            if not rel.startswith(SKIP):
                out.append(p)
    return out


def _units() -> tuple[list[Unit], list[Unit]]:
    functions, classes = [], []
    for path in _files(("hub", "tools")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            assert node.end_lineno is not None
            unit = Unit(f"{rel}:{node.lineno}", node.name, node.end_lineno - node.lineno + 1)
            (classes if isinstance(node, ast.ClassDef) else functions).append(unit)
    return functions, classes


def _lazy_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    out = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    out.append(node)
    return out


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import names (``from a import b`` names ``a.b`` when b
    is a module of an allowed package, else ``a``)."""
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        return [f"{base}.{a.name}" if _allowed(f"{base}.{a.name}") else base for a in node.names]
    return [a.name for a in node.names]


def _allowed(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in LAZY_ALLOWED)


def lazy_import_problems(source: str, where: str) -> list[str]:
    """What is wrong with the function-level imports of one module's source."""
    lines = source.splitlines()
    problems = []
    for node in _lazy_imports(ast.parse(source)):
        text = lines[node.lineno - 1]
        for module in _imported(node):
            if not _allowed(module):
                problems.append(f"{where}:{node.lineno}: {module} imported inside a function")
            elif "# lazy" not in text:
                problems.append(f"{where}:{node.lineno}: {module}: say why (# lazy: ...)")
    return problems


def test_no_function_is_over_the_limit() -> None:
    functions, _ = _units()
    over = sorted((u for u in functions if u.lines > MAX_FUNCTION_LINES), key=lambda u: -u.lines)
    assert not over, "functions over 120 lines:\n" + "\n".join(map(str, over))


def test_no_class_is_over_the_limit() -> None:
    _, classes = _units()
    over = sorted((u for u in classes if u.lines > MAX_CLASS_LINES), key=lambda u: -u.lines)
    assert not over, "classes over 400 lines:\n" + "\n".join(map(str, over))


def test_the_largest_function_and_class_are_named(record_property: pytest.RecordProperty) -> None:
    functions, classes = _units()
    largest_f = max(functions, key=lambda u: u.lines)
    largest_c = max(classes, key=lambda u: u.lines)
    record_property("largest_function", str(largest_f))
    record_property("largest_class", str(largest_c))
    print(f"largest function: {largest_f}; largest class: {largest_c}")
    assert largest_f.lines <= MAX_FUNCTION_LINES, largest_f
    assert largest_c.lines <= MAX_CLASS_LINES, largest_c


def test_imports_inside_functions_are_the_allowed_lazy_ones() -> None:
    problems = []
    for path in _files(CODE):
        problems += lazy_import_problems(path.read_text(), path.relative_to(ROOT).as_posix())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("def f():\n    import json\n", "json imported inside a function"),
        ("def f():\n    from hub.state import store\n", "hub.state imported inside a function"),
        ("def f():\n    import onnx\n", "onnx: say why"),
        ("class A:\n    def f(self):\n        import sklearn.svm\n", "sklearn.svm: say why"),
        ("def f():\n    import onnx  # lazy: the train extra\n", None),
        ("import json\n\ndef f():\n    return json\n", None),
    ],
)
def test_the_import_rule_catches_what_it_should(source: str, found: str | None) -> None:
    problems = lazy_import_problems(source, "x.py")
    if found is None:
        assert problems == []
    else:
        assert len(problems) == 1 and found in problems[0]

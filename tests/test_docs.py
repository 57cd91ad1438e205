"""The docs match the code: the README's library example runs, the public API resolves,
docs/architecture.md names every module, and the command line starts without heavy imports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import emdcli

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("numpy", "onnxruntime", "ot", "PIL", "yaml", "torch", "scipy")


def test_every_public_name_resolves() -> None:
    assert emdcli.__all__[0] == "__version__"
    for name in emdcli.__all__:
        assert getattr(emdcli, name) is not None, name
    with pytest.raises(AttributeError):
        _ = emdcli.no_such_name  # type: ignore[attr-defined]


@pytest.mark.parametrize("module", ["emdcli", "emdcli.cli.app"])
def test_import_is_light(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def architecture_paths(tree: str) -> set[str]:
    """The module paths the layout drawing names: ``emdcli/cli/classify.py``, from its indented tree
    (two spaces a level; a folder ends with ``/``; a line may name several modules, comma-separated)."""
    entry = re.compile(r"^( *)((?:[a-z_]+\.py, )*[a-z_]+\.py|[a-z_]+/)(?:\s|$)")
    folders: list[str] = []
    named = set()
    for line in tree.splitlines():
        found = entry.match(line)
        if not found:
            continue
        level = len(found.group(1)) // 2
        del folders[level:]
        if found.group(2).endswith("/"):
            folders.append(found.group(2))
        else:
            named.update("".join(folders) + name for name in found.group(2).split(", "))
    return named


def test_architecture_names_every_module() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    tree = doc[doc.index("```text") : doc.index("```", doc.index("```text") + 7)]
    named = architecture_paths(tree)
    package = REPO / "emdcli"
    modules = {str(p.relative_to(REPO)) for p in package.rglob("*.py")
               if p.name != "__main__.py" and (p.name != "__init__.py" or p.parent == package)}  # fmt: skip
    # (a sub-package's __init__.py is named by its folder)
    assert modules - named == set(), "docs/architecture.md does not name these modules"
    assert named - modules == set(), "docs/architecture.md names modules that do not exist"


def test_no_string_of_the_library_names_a_flag() -> None:
    """Outside cli/, a setting is named `like_this` (the CLI says --like-this): renaming a flag edits only
    the CLI. Docstrings may still say which option of which command a function serves."""
    import ast

    flag = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
    found = []
    for path in sorted((REPO / "emdcli").rglob("*.py")):
        if "cli" in path.relative_to(REPO / "emdcli").parts[:1]:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        found += [
            f"{path.relative_to(REPO)}:{node.lineno}: {flag.findall(node.value)}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
            and flag.search(node.value)
        ]  # fmt: skip
    assert found == []


def test_the_command_line_names_the_flags_of_the_settings_the_library_names() -> None:
    from emdcli.cli.stderr import as_flags

    assert (
        as_flags("`sort_into` and `format` csv; `way` 3 `open_set` 1")
        == "--sort-into and --format csv; --way 3 --open-set 1"
    )
    assert as_flags("the `fmt` word and `nothing_known`") == "the `fmt` word and `nothing_known`"


def test_help_texts_and_defaults_quote_no_measured_figure() -> None:
    """Measured speed-ups and accuracy costs live in docs/benchmarks.md; help texts (the command pages'
    generated reference) and defaults.py link to it."""
    figure = re.compile(r"\b\d+(?:\.\d+)?x (?:as fast|faster)|\d+\.\d+x\b|\b\d+(?:\.\d+)? points?\b")
    for path in (*sorted((REPO / "docs" / "commands").glob("*.md")), REPO / "emdcli" / "defaults.py"):
        assert figure.findall(path.read_text(encoding="utf-8")) == [], path.name


@pytest.mark.e2e
def test_the_python_api_page_runs(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    page = (REPO / "docs" / "python-api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(blocks) == 4
    monkeypatch.chdir(REPO)
    for code in blocks:
        exec(compile(code, "docs/python-api.md", "exec"), {})
    out = capsys.readouterr().out
    queries = len(list((REPO / "examples" / "queries").rglob("*.png")))
    assert re.search(rf"^{queries} \{{'copied': {queries}\}} \d\.\d\d$", out, re.M), out
    assert f"10 rows kept, {queries - 10} classified now" in out
    assert f"{queries} classified" in out
    assert f"{queries - 1} left to review; label next: [" in out


def test_no_function_of_the_cli_is_over_80_lines() -> None:
    """The CLI parses, calls the library and renders: a function, its decorators and signature included,
    stays short (a command's options are module-level Annotated aliases)."""
    import ast

    long = []
    for path in sorted((REPO / "emdcli" / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef):
                lines = (node.end_lineno or 0) - node.lineno + 1 + len(node.decorator_list)
                if lines > 80:
                    long.append(f"{path.name}:{node.name} {lines}")
    assert long == []


def test_the_docs_hold_no_path_of_a_development_machine() -> None:
    """Commands and outputs in README and docs name paths a user has (relative ones, the bundled examples)."""
    machine = re.compile(r"(?<![\w.])/(?:tmp|work|root|home)/")
    pages = [*sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "docs" / "commands").glob("*.md"))]
    for path in (REPO / "README.md", *pages, REPO / "mkdocs.yml"):
        found = [line for line in path.read_text(encoding="utf-8").splitlines() if machine.search(line)]
        assert found == [], path.name

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


def test_architecture_names_every_module() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    tree = doc[doc.index("```text") : doc.index("```", doc.index("```text") + 7)]
    named = set(re.findall(r"([a-z_]+\.py)", tree))
    package = REPO / "emdcli"
    for path in package.rglob("*.py"):
        if path.name != "__main__.py":
            assert path.name in named, f"docs/architecture.md does not name {path.relative_to(REPO)}"


@pytest.mark.e2e
def test_readme_library_example_runs(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### As a library") :]
    start = section.index("```python") + len("```python")
    code = section[start : section.index("```", start)]
    monkeypatch.chdir(REPO)
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)
    out = capsys.readouterr().out
    assert "clock03.png signs_and_symbols_clocks" in out
    assert re.search(r"^default \d+\.\d ± \d+\.\d$", out, re.M)
    assert len(scope["hits"]) == 4  # type: ignore[arg-type]

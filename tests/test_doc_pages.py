"""The docs site: every command has a page in the nav, every shell example on the pages runs as written, and
``mkdocs build --strict`` passes.

The examples are the ```bash blocks of docs/index.md, docs/configuration.md and docs/commands/*.md. Each block
runs on its own, in a temporary folder holding a copy of the repository's examples/ (so ``examples/support`` and
``examples/queries`` are the bundled ones), with the real bundled model. A line that installs (``pip install``,
``python3 -m venv``) is not run: the extras it names are what the block needs, and the block is skipped when one
is missing. A line marked ``# runs until Ctrl-C`` is started, stopped with SIGTERM once it says ``Ctrl-C stops``,
and must exit 0.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer.main
import yaml

from emdcli.cli import app
from emdcli.cli.reference import BEGIN, END

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
EXAMPLE_PAGES = [DOCS / "index.md", DOCS / "configuration.md", *sorted((DOCS / "commands").glob("*.md"))]
#: What each extra brings that its examples need.
EXTRA_MODULES = {"fast": ["pywuffs"], "ray": ["ray", "pyarrow"], "export": ["torch", "timm", "onnx"]}
EXTRA_MODULES["train"] = EXTRA_MODULES["export"]
#: Examples that take long (training, exporting, a Ray cluster): marked slow.
HEAVY = re.compile(r"emdcli (?:train|export)\b|--engine ray")
UNTIL_STOPPED = "# runs until Ctrl-C"
READY = "Ctrl-C stops"


def visible_commands() -> list[str]:
    group = typer.main.get_command(app)
    return [name for name, command in group.commands.items() if not command.hidden]  # type: ignore[attr-defined]


def nav_pages() -> list[str]:
    """Every page the nav of mkdocs.yml names, in order."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))

    def walk(entry: object) -> list[str]:
        if isinstance(entry, str):
            return [entry]
        if isinstance(entry, list):
            return [page for item in entry for page in walk(item)]
        if isinstance(entry, dict):
            return [page for value in entry.values() for page in walk(value)]
        return []

    return walk(config["nav"])


def bash_blocks(page: Path) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```$", page.read_text(encoding="utf-8"), flags=re.M | re.S)


def is_install(line: str) -> bool:
    return "pip install" in line or line.lstrip().startswith("python3 -m venv")


def missing_modules(block: str) -> list[str]:
    """The modules of the extras the block's install lines name that are not importable here."""
    extras = [
        extra
        for line in block.splitlines()
        if is_install(line)
        for group in re.findall(r"\[([a-z,-]+)\]", line)
        for extra in group.split(",")
    ]
    modules = [module for extra in extras for module in EXTRA_MODULES.get(extra, [])]
    return [module for module in dict.fromkeys(modules) if importlib.util.find_spec(module) is None]


def segments(block: str) -> list[tuple[str, str]]:
    """The block as ("script", text) runs of ordinary lines and ("until-stopped", line) lines, install lines out."""
    found: list[tuple[str, str]] = []
    script: list[str] = []
    for line in block.splitlines():
        if is_install(line):
            continue
        if UNTIL_STOPPED in line:
            if script:
                found.append(("script", "\n".join(script)))
                script = []
            found.append(("until-stopped", line.split(UNTIL_STOPPED)[0].strip()))
        else:
            script.append(line)
    if any(line.strip() and not line.lstrip().startswith("#") for line in script):
        found.append(("script", "\n".join(script)))
    return found


def example_params() -> list[object]:
    params = []
    for page in EXAMPLE_PAGES:
        for n, block in enumerate(bash_blocks(page), 1):
            marks = [pytest.mark.e2e] + ([pytest.mark.slow] if HEAVY.search(block) else [])
            params.append(pytest.param(block, id=f"{page.relative_to(DOCS)}:{n}", marks=marks))
    return params


def test_every_command_has_a_page_and_a_nav_entry() -> None:
    names = visible_commands()
    assert names, "the app has no visible command"
    nav = nav_pages()
    for name in names:
        page = DOCS / "commands" / f"{name}.md"
        assert page.exists(), f"docs/commands/{name}.md is missing"
        assert f"commands/{name}.md" in nav, f"mkdocs.yml's nav lacks commands/{name}.md"
        text = page.read_text(encoding="utf-8")
        assert text.startswith(f"# `emdcli {name}`\n"), name
        assert "\n## Exit codes\n" in text, f"{name}.md has no exit codes"
        assert BEGIN in text and END in text, f"{name}.md has no generated option reference"
        assert any(f"emdcli {name}" in block for block in bash_blocks(page)), f"{name}.md has no example of it"
    assert "commands/index.md" in nav
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "results" not in p.relative_to(DOCS).parts}
    assert pages - set(nav) == set(), "pages that the nav does not list"
    assert set(nav) - pages == set(), "the nav lists pages that do not exist"
    hidden = [n for n, c in typer.main.get_command(app).commands.items() if c.hidden]  # type: ignore[attr-defined]
    assert all(not (DOCS / "commands" / f"{name}.md").exists() for name in hidden)


def test_the_examples_are_found() -> None:
    """The runner sees what the pages show: install lines out, the long-running lines apart."""
    block = "pip install 'emdcli[ray]'\nmkdir -p inbox\nemdcli watch s inbox/   # runs until Ctrl-C\nls\n"
    assert segments(block) == [
        ("script", "mkdir -p inbox"),
        ("until-stopped", "emdcli watch s inbox/"),
        ("script", "ls"),
    ]
    assert missing_modules("pip install 'emdcli[nothing]'") == []
    assert len(example_params()) >= len(visible_commands())


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feature-cache")


def _environment(tmp_path: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMDCLI_") and k != "COLUMNS"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this venv's emdcli first
    env.update(EMDCLI_CACHE_DIR=str(cache), XDG_CONFIG_HOME=str(tmp_path / ".config"), NO_COLOR="1")
    return env


def _run_until_stopped(command: str, cwd: Path, env: dict[str, str]) -> None:
    log = cwd / ".until-stopped.stderr"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        deadline = time.monotonic() + 120
        while READY not in log.read_text(errors="replace") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, f"{command!r} exited {proc.returncode} early:\n{log.read_text()}"
        assert READY in log.read_text(errors="replace"), f"{command!r} never said it was ready:\n{log.read_text()}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, f"{command!r} exited {proc.returncode} on SIGTERM:\n{log.read_text()}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("block", example_params())
def test_the_shell_examples_run(block: str, tmp_path: Path, feature_cache: Path) -> None:
    missing = missing_modules(block)
    if missing:
        pytest.skip(f"needs the extra its install line names ({', '.join(missing)} not installed)")
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    env = _environment(tmp_path, feature_cache)
    for kind, text in segments(block):
        if kind == "until-stopped":
            _run_until_stopped(text, tmp_path, env)
            continue
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, f"exit {done.returncode}:\n{text}\n--- stderr:\n{done.stderr[-3000:]}"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("needs the docs extra: pip install '.[docs]'")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    assert "WARNING" not in done.stderr, done.stderr[-5000:]
    assert (tmp_path / "site" / "commands" / "classify" / "index.html").exists()
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    import emdcli

    for name in emdcli.__all__[1:]:  # every public name, rendered from its docstring
        assert f'id="{emdcli._EXPORTS[name].split(":")[0]}.{name}"' in api, name

"""benchmarks/common.py's `publish`: what a benchmark run records in benchmarks/results/."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import common  # noqa: E402


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "results"
    monkeypatch.setenv(common.RESULTS_DIR_ENV, str(folder))
    argv = [str(REPO / "benchmarks" / "x.py"), "--phase", "dev", "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    return folder


def test_publish_writes_the_output_under_a_header_with_the_paths_of_the_machine_replaced(
    results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with common.publish("x", "--phase", "--shots={}shot"):
        print(f"accuracy 52.1 ± 1.0, cache {REPO}/benchmarks/out, scratch {tempfile.gettempdir()}/run1")
        print(f"home {Path.home()}/models")
    assert "accuracy 52.1 ± 1.0" in capsys.readouterr().out  # still printed as it came
    text = (results / "x_dev.md").read_text(encoding="utf-8")
    header, _, body = text.partition("```text\n")
    assert header.startswith("# x_dev\n")
    assert "- Command: `python benchmarks/x.py --phase dev --out <tmp>/" in header
    assert "UTC, commit " in header
    assert f"- Machine: {common.os.cpu_count()} cores, " in header
    assert "- Python 3." in header and ", onnxruntime " in header
    assert body == "accuracy 52.1 ± 1.0, cache ./benchmarks/out, scratch <tmp>/run1\nhome <home>/models\n```\n"
    for path in {str(REPO), tempfile.gettempdir(), str(Path.home())}:
        assert path + "/" not in text
    assert [p.name for p in results.iterdir()] == ["x_dev.md"]  # no temporary file left


def test_publish_writes_nothing_when_the_run_fails(results: Path) -> None:
    with pytest.raises(RuntimeError), common.publish("failed"):
        print("half a table")
        raise RuntimeError("the run broke")
    with pytest.raises(SystemExit), common.publish("exited"):
        print("half a table")
        sys.exit(2)
    assert not results.exists() or list(results.iterdir()) == []
    assert sys.stdout is sys.__stdout__ or not isinstance(sys.stdout, common._Tee)


def test_publish_writes_when_the_script_exits_with_status_0(results: Path) -> None:
    with pytest.raises(SystemExit), common.publish("done"):
        print("1.5x")
        sys.exit(0)
    assert (results / "done.md").read_text(encoding="utf-8").endswith("```text\n1.5x\n```\n")


def test_results_name_appends_the_variant_given_on_the_command_line() -> None:
    argv = ["x.py", "--phase", "report", "--shots=5", "--startup-only"]
    assert common.results_name("open_set", "--phase", "--shots={}shot", "--model", argv=argv) == "open_set_report_5shot"
    assert common.results_name("throughput", "--startup-only=startup", argv=argv) == "throughput_startup"
    assert common.results_name("throughput", "--startup-only=startup", argv=["x.py"]) == "throughput"


def test_every_benchmark_that_prints_figures_publishes_them() -> None:
    scripts = sorted(p for p in (REPO / "benchmarks").glob("*.py") if p.name not in {"common.py", "build_banks.py"})
    assert scripts
    for script in scripts:
        main_block = script.read_text(encoding="utf-8").partition('if __name__ == "__main__":')[2]
        assert "with publish(" in main_block, script.name

"""progress_bar in a log (plain lines as the work goes) and captured_native_stderr (fd 2 chatter dropped unless the
block fails)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import pytest
from rich.console import Console
from rich.progress import Progress

from edge_crossformer.util import LineProgress, progress_bar


def _log_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=80), out


def test_log_lines_appear_as_the_work_goes():
    console, out = _log_console()
    with progress_bar(console=console, transient=False) as bar:
        assert isinstance(bar, LineProgress)
        task = bar.add_task("loading model", total=3)
        assert out.getvalue().rstrip().endswith("0/3  loading model")
        bar.advance(task)
        assert "1/3  loading model" in out.getvalue()
        bar.update(task, description="executorch: lowering")
        assert out.getvalue().rstrip().endswith("1/3  executorch: lowering")
        bar.advance(task)
        bar.advance(task)
        bar.update(task, description="done")
        lines = out.getvalue().splitlines()
    assert [line.split("  ", 2)[2] for line in lines] == [
        "0/3  loading model", "1/3  loading model", "1/3  executorch: lowering", "2/3  executorch: lowering",
        "3/3  executorch: lowering", "3/3  done"]
    assert all(line[2] == ":" and line.split("  ")[1] == "0:00:00" for line in lines)  # clock time, elapsed


def test_advancing_is_throttled_to_a_tenth_of_the_total_and_the_end():
    console, out = _log_console()
    with progress_bar(console=console) as bar:
        task = bar.add_task("training", total=1000)
        for step in range(1000):  # a description that changes with every step, as in train.py
            bar.update(task, advance=1, description=f"epoch 1/1 loss {1 / (step + 1):.3f}")
            if step == 99:
                assert out.getvalue().splitlines()[-1].split("  ")[2] == "100/1000"
    counts = [line.split("  ")[2] for line in out.getvalue().splitlines()]
    assert counts == ["0/1000"] + [f"{n}/1000" for n in range(100, 1001, 100)]


def test_time_also_triggers_a_line_and_unknown_totals_end_with_one(monkeypatch):
    console, out = _log_console()
    with progress_bar(console=console) as bar:
        task = bar.add_task("calibrating", total=None)
        bar.update(task, completed=1)
        assert len(out.getvalue().splitlines()) == 1
        monkeypatch.setattr(LineProgress, "EVERY_S", 0.0)
        bar.update(task, completed=2, total=1000)
        assert out.getvalue().splitlines()[-1].split("  ")[2] == "2/1000"
        monkeypatch.setattr(LineProgress, "EVERY_S", 30.0)
        bar.update(task, completed=3)
        assert len(out.getvalue().splitlines()) == 2
    assert out.getvalue().splitlines()[-1].split("  ")[2] == "3/1000"  # shown on leaving the block
    bar.console.print("printed through bar.console")  # train.py prints epoch records this way
    assert "printed through bar.console" in out.getvalue()


def test_a_terminal_still_gets_a_live_bar():
    console = Console(file=io.StringIO(), force_terminal=True)
    assert isinstance(progress_bar(console=console, transient=False), Progress)


def _child(body: str) -> subprocess.CompletedProcess:
    code = "import os\nfrom edge_crossformer.util import captured_native_stderr\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)


def test_native_stderr_is_dropped_when_the_block_succeeds():
    done = _child("""
        os.write(2, b"before\\n")
        with captured_native_stderr():
            os.write(2, b"[cpuinfo_utils.cpp:71] noise\\n")
            with captured_native_stderr():  # nested
                os.write(2, b"inner noise\\n")
            os.write(2, b"more noise\\n")
        os.write(2, b"after\\n")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "before\nafter\n"


def test_native_stderr_is_shown_when_the_block_fails():
    done = _child("""
        with captured_native_stderr():
            os.write(2, b"outer context\\n")
            with captured_native_stderr():
                os.write(2, b"real error from C\\n")
                raise RuntimeError("load_method failed")
    """)
    assert done.returncode == 1
    assert done.stderr.startswith("outer context\nreal error from C\n")
    assert "RuntimeError: load_method failed" in done.stderr


def test_native_stderr_capture_under_pytest_capture(capfd):
    from edge_crossformer.util import captured_native_stderr

    with captured_native_stderr():
        os.write(2, b"fd noise\n")
    with pytest.raises(ValueError), captured_native_stderr():
        os.write(2, b"kept\n")
        raise ValueError
    assert capfd.readouterr().err == "kept\n"  # fd 2 is pytest's temporary file here, not a terminal

"""Small shared helpers: the progress bar style (plain lines in logs), native stderr capture."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings
from datetime import timedelta


def progress_bar(**kw):
    """A rich progress bar with the columns this project uses everywhere; on a console that is not a terminal (CI,
    `> log`, `| tee`), where a live bar shows nothing until it ends, a LineProgress instead."""
    from rich import get_console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = kw.get("console") or get_console()
    if not console.is_terminal and not console.is_jupyter:
        return LineProgress(console)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), **kw)


class LineProgress:
    """The part of rich's Progress used here (add_task, update, advance, console, `with`), as plain timestamped lines
    that a log shows as the work goes: one when a task is added, one when only its description changes, and while it
    advances (a description changing with it, as in a training loop, included) one per tenth of the total or 30 s,
    whichever comes first, and one at completion."""

    EVERY_FRACTION = 0.1
    EVERY_S = 30.0

    def __init__(self, console):
        self.console = console
        self._tasks: list[dict] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for task_id, task in enumerate(self._tasks):  # progress not yet shown (an unknown total, a short last stretch)
            if task["shown"] != (task["description"], task["completed"]):
                self._line(task_id)

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0, completed: float = 0,
                 **_) -> int:
        self._tasks.append({"description": description, "total": total, "completed": completed,
                            "started": time.monotonic()})
        self._line(len(self._tasks) - 1)
        return len(self._tasks) - 1

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, **_) -> None:
        task = self._tasks[task_id]
        renamed = description is not None and description != task["description"]
        task["description"] = description if description is not None else task["description"]
        task["total"] = total if total is not None else task["total"]
        task["completed"] = completed if completed is not None else task["completed"] + (advance or 0)
        if completed is None and advance is None:
            if renamed:
                self._line(task_id)
            return
        n, total, (_, shown_n), since = task["completed"], task["total"], task["shown"], task["shown_at"]
        if ((total is not None and n >= total > shown_n) or time.monotonic() - since >= self.EVERY_S
                or (total and n - shown_n >= self.EVERY_FRACTION * total)):
            self._line(task_id)

    def _line(self, task_id: int) -> None:
        task = self._tasks[task_id]
        now = time.monotonic()
        task["shown"], task["shown_at"] = (task["description"], task["completed"]), now
        count = f"{_count(task['completed'])}" + (f"/{_count(task['total'])}" if task["total"] is not None else "")
        elapsed = timedelta(seconds=int(now - task["started"]))
        self.console.print(f"{time.strftime('%H:%M:%S')}  {elapsed}  {count}  {task['description']}", markup=False,
                           highlight=False, emoji=False, soft_wrap=True)


def _count(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else f"{n:.1f}"


@contextlib.contextmanager
def quiet_converters():
    """While converters and quantizers run: their INFO / WARNING logging (they set their own logger levels, so
    loggers are silenced globally, below ERROR), their Python warnings and their tqdm bars off; the caller's
    settings come back afterwards. Errors still surface as exceptions. The one place this tool quiets others."""
    disabled = logging.root.manager.disable
    tqdm = os.environ.get("TQDM_DISABLE")
    logging.disable(max(disabled, logging.WARNING))
    os.environ["TQDM_DISABLE"] = "1"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)
        if tqdm is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm


@contextlib.contextmanager
def captured_native_stderr():
    """Send what is written to file descriptor 2 while the block runs into a temporary file: dropped when the block
    succeeds, written back to stderr before the exception propagates when it fails, so real errors still show.

    Why: ExecuTorch's C++ runtime prints cpuinfo and threadpool chatter straight to fd 2 when it first loads a
    method, out of reach of contextlib.redirect_stderr. fd 2 belongs to the process: other threads' stderr is held
    too while the block runs. Nests (an inner failure's text lands in the outer capture); a no-op with no fd 2.
    """
    try:
        saved = os.dup(2)
    except OSError:  # fd 2 closed (a daemon): nothing to capture
        saved = None
    if saved is None:
        yield
        return
    _flush_stderr()  # Python's own buffered text belongs before the capture
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            _flush_stderr()
            os.dup2(saved, 2)
            sink.seek(0)
            data = sink.read()
            with contextlib.suppress(OSError):  # a closed stderr must not replace the real exception
                while data:
                    data = data[os.write(2, data):]
            raise
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)


def _flush_stderr() -> None:
    with contextlib.suppress(Exception):  # sys.stderr may be None, closed, or a stand-in without flush
        sys.stderr.flush()


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None when matplotlib (the `plots` extra) is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt

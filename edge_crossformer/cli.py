"""What every command line shares: bounded argument types (a bad value is refused by argparse, exit 2, with the
bound in the message) and one way out for signals, full disks and interrupts (`run_cli`)."""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import signal
import sys
from typing import Callable, Sequence

# Bounds shared by every command (each option's --help states the bound it uses).
# Backbones: detection inputs are wider (mmdet's 1333 x 800 pads to 1344 x 800).
MAX_FEATURE_SIDE = 1536
MAX_IMG_SIZE = 1024          # px; memory and time grow with the square (a 4096 px export ran past 7 min at 5.9 GB)
MAX_NUM_CLASSES = 100_000    # ImageNet-22k has 21,841
MAX_IMAGES = 10_000_000      # any image count or limit
MAX_BATCH = 65_536           # images per training or evaluation batch
MAX_THREADS = 1024           # beyond the cores more threads only oversubscribe
MAX_RUNS = 1_000_000         # timed or warm-up runs per benchmark case
MAX_SEED = 2**32 - 1         # 32-bit seeds, as numpy and the apps take them (torch would take 64 bits)


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {_range(low, high)}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {_range(low, high)}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_in(low: float, high: float | None = None, *, low_open: bool = False, negative_disables: bool = False
             ) -> Callable[[str], float]:
    """argparse type: a finite float in [low, high] (or (low, high] with `low_open`); with `negative_disables`
    any negative value is accepted too (it switches the feature off)."""
    what = _range(low, high, low_open) + (" (or negative to disable)" if negative_disables else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number {what}, got {text}")
        if negative_disables and value < 0:
            return value
        if value < low or (low_open and value == low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value

    parse.__name__ = "number"
    return parse


def _range(low, high, low_open: bool = False) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    return f"in {'(' if low_open else '['}{low}, {high}]"


def regex_problem(text: str) -> str | None:
    """Why `text` is not a valid regular expression, or None."""
    try:
        re.compile(text)
    except re.error as e:
        return (f"invalid regular expression {text!r}: {e}; escape special characters such as ( [ . with a "
                "backslash")
    return None


def regex(text: str) -> str:
    """argparse type: a valid regular expression (checked now, not deep inside a quantizer)."""
    problem = regex_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def percentage_points(text: str) -> float:
    """argparse type: an accuracy drop in percentage points, 0 <= PP < 100 (100 would accept any model)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of percentage points in [0, 100), got {text!r}") from None
    if not (math.isfinite(value) and 0 <= value < 100):
        raise argparse.ArgumentTypeError(f"must be in [0, 100) percentage points, got {text}")
    return value


def names(choices: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    """argparse type: a comma-separated list of `choices` (at least one; order kept, repeats dropped)."""

    def parse(text: str) -> tuple[str, ...]:
        given = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        unknown = [n for n in given if n not in choices]
        if unknown or not given:
            found = f"unknown {what}(s) {', '.join(map(repr, unknown))}" if unknown else f"no {what} given"
            raise argparse.ArgumentTypeError(f"{found}; choose one or more of {', '.join(choices)}, "
                                             f"separated by commas")
        return given

    parse.__name__ = f"{what} list"
    return parse


def img_size(text: str) -> int:
    """argparse type: an input size, a multiple of 32 in [32, MAX_IMG_SIZE]."""
    value = int_in(32, MAX_IMG_SIZE)(text)
    if value % 32:
        low = value // 32 * 32
        raise argparse.ArgumentTypeError(f"must be a multiple of 32 (4x patch embedding, then three 2x merges), "
                                         f"got {value}; nearest valid sizes: {max(low, 32)} or {low + 32}")
    return value


def side(text: str) -> int:
    """argparse type: one side of an input, a multiple of 32 in [32, MAX_FEATURE_SIDE] (the classifier's own bound,
    MAX_IMG_SIZE, is checked with the request)."""
    value = int_in(32)(text)
    if value > MAX_FEATURE_SIDE:
        raise argparse.ArgumentTypeError(f"must be in [32, {MAX_IMG_SIZE}] for the classifier, or [32, "
                                         f"{MAX_FEATURE_SIDE}] per side for --task features, got {value}")
    if value % 32:
        low = value // 32 * 32
        raise argparse.ArgumentTypeError(f"must be a multiple of 32 (strides 4, 8, 16, 32), got {value}; nearest "
                                         f"valid sizes: {max(low, 32)} or {low + 32}")
    return value


def hw_size(text: str) -> tuple[int, int]:
    """argparse type: HxW (or N for a square), each side as `side` says."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip() for p in parts):
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 384x640) or N, got {text!r}")
    values = tuple(side(p.strip()) for p in parts)
    return values if len(values) == 2 else values * 2


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread so every `except BaseException` cleanup runs as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def disk_full(error: BaseException) -> OSError | None:
    """The ENOSPC / EDQUOT error in `error` or its causes, if any (converters wrap them in their own errors)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return error
        error = error.__cause__ or error.__context__
    return None


# torchrun stops every process of a job with SIGTERM when one of them fails (or when it is stopped itself).
TORCHRUN_STOP = ("; under torchrun this is also how every process stops when one of them fails (torchrun's report "
                 "then names the rank and its exit code). Rerun the same command to resume from the last completed "
                 "epoch")


def run_cli(main: Callable[[], int], user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command's body with SIGTERM / SIGHUP handled like Ctrl-C; exit codes: the body's, 2 with one line for
    `user_errors` and a full disk, 130 / 143 / 129 for interrupts (their cleanups have run by then)."""
    from .distributed import LostContact, launched, secondary  # here: importing this module needs no torch

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, _raise_terminated)
        except (ValueError, OSError):  # not the main thread, or a platform without the signal
            pass
    try:
        return main()
    except user_errors as e:
        if not secondary() or isinstance(e, LostContact):  # the latter can be this rank's alone
            print(f"error: {e}" + (f" (rank {os.environ.get('RANK')})" if secondary() else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Terminated) else signal.SIGINT
        if not secondary():
            print(f"interrupted ({signal.Signals(signum).name}); nothing half-written was left behind"
                  + (TORCHRUN_STOP if launched() and signum == signal.SIGTERM else ""), file=sys.stderr)
        return 128 + int(signum)
    except Exception as e:  # a full disk, however a converter wrapped it; anything else is a bug: traceback
        full = disk_full(e)
        if full is None:
            raise
        print(f"error: the disk is full ({full.strerror}{f': {full.filename}' if full.filename else ''}); "
              f"nothing was written: free some space or choose another output directory", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

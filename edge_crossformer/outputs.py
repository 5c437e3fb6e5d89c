"""Where a command other than the export writes, checked before it does any work.

Every command that writes (`quantize qat`, `quantize sensitivity`, each `benchmarks` subcommand) asks `check_output`
for each of its outputs, with every path the user gave as input. The input-vs-output rule itself is
`files.inputs_at_risk`, the one the export uses: symlinks, `..` and bind mounts resolved."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from .files import inputs_at_risk

Inputs = Mapping[str, "Path | str | Iterable[Path | str] | None"]


class OutputError(ValueError):
    """An output this command cannot write, or whose writing would overwrite an input: one line, exit 2."""


def check_output(path: Path, flag: str, *, directory: bool, inputs: Inputs = {},
                 owned: Iterable[Path] | None = None) -> None:
    """`path` (given as `flag`) is a `directory` or a file this command may create or replace, and no input (flag ->
    path or paths) lies inside what the command owns there: `owned` (default: `path` itself; a directory output
    is the command's as a whole, unless `owned` narrows it to the entries it replaces). Creates nothing."""
    path = Path(os.path.abspath(os.path.expanduser(path)))
    _check_kind(path, flag, directory)
    _check_writable(path, flag)
    for place in ([path] if owned is None else [Path(os.path.abspath(p)) for p in owned]):
        for name, given in inputs.items():
            for item in inputs_at_risk(place, _paths(given)):
                what = f"{flag} {path}" if place == path else f"{place}, which this command replaces"
                where = f"inside {what}" if place.is_dir() else what
                alias = "" if Path(os.path.abspath(item)).is_relative_to(place) else " (through a link or another name)"
                raise OutputError(f"{name} {item} is {where}{alias}; it would be overwritten: move it out or choose "
                                  f"another {flag}")
            _check_not_part_of(place, name, given, flag)


def _check_not_part_of(place: Path, name: str, given, flag: str) -> None:
    """The other way round: an existing entry this command replaces that lies inside an input folder is part of
    that input (a data folder's own sensitivity.json), and replacing it would change the input."""
    if not place.exists():
        return
    for item in _paths(given):
        if item is not None and str(item) and Path(item).is_dir() and inputs_at_risk(item, [place]):
            raise OutputError(f"{place}, which this command replaces, is inside {name} {item}; it would overwrite "
                              f"part of that input: choose another {flag}")


def _paths(given) -> list:
    if given is None or isinstance(given, (str, os.PathLike)):
        return [given]
    return list(given)


def _check_kind(path: Path, flag: str, directory: bool) -> None:
    if directory and path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file; pass a directory")
    if not directory and path.is_dir():
        raise OutputError(f"{flag} {path} is a directory; pass a file path (e.g. {path / 'NAME'})")


def _check_writable(path: Path, flag: str) -> None:
    """The nearest existing folder at or above where `path` goes must be a directory this user may write."""
    probe = path if path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot create {flag} {path}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {flag} {path}: no write permission in {probe}; choose another {flag}")

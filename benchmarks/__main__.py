"""python -m benchmarks [latency options] | accuracy ... | merge FILES... | golden ... | android ..."""

from __future__ import annotations

import importlib
import sys

# subcommand -> module with run(argv) -> exit code; no subcommand means the latency benchmark.
SUBCOMMANDS = {
    "accuracy": "benchmarks.accuracy",
    "merge": "benchmarks.merge",
    "golden": "benchmarks.golden",
    "android": "benchmarks.android",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return importlib.import_module(SUBCOMMANDS[argv[0]]).run(argv[1:])
    return importlib.import_module("benchmarks.latency").run(argv)


if __name__ == "__main__":
    sys.exit(main())

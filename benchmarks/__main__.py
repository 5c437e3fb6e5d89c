"""python -m benchmarks accuracy ..."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "accuracy":
        from .accuracy import run

        return run(argv[1:])
    print("usage: python -m benchmarks accuracy [--model NAME] [--checkpoint PATH] [--data DIR] ...\n"
          "(latency benchmarks are not implemented yet)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""python -m benchmarks [latency options] | accuracy | merge FILES... | golden | android | ddp | profile (each: --help)"""

from __future__ import annotations

import importlib
import sys

from edge_crossformer.cli import run_cli
from edge_crossformer.distributed import DistributedError
from edge_crossformer.outputs import OutputError

from .verify import ArtifactError

# subcommand -> module with run(argv) -> exit code; no subcommand means the latency benchmark.
SUBCOMMANDS = {
    "accuracy": "benchmarks.accuracy",
    "merge": "benchmarks.merge",
    "golden": "benchmarks.golden",
    "android": "benchmarks.android",
    "ddp": "benchmarks.ddp",
    "profile": "benchmarks.profile",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        module, args = SUBCOMMANDS[argv[0]], argv[1:]
    else:
        module, args = "benchmarks.latency", argv
    # Each subcommand reports its own input errors; run_cli adds SIGTERM / SIGHUP handled like Ctrl-C (cleanups
    # run, exit 143 / 129) and one line for a full disk; processes of a torchrun job that disagree or lose each
    # other (accuracy) say so in one line too.
    # A cached or given export that its manifest does not vouch for, and an output that would overwrite an input,
    # end any subcommand with one line too.
    return run_cli(lambda: importlib.import_module(module).run(args),
                   user_errors=(DistributedError, ArtifactError, OutputError))


if __name__ == "__main__":
    sys.exit(main())

"""Every command line but `python -m export` (tests/test_export_cli.py) refuses bad numbers and patterns up front:
argparse exit 2 with the option and its bound in the message, never a traceback. `run_cli` turns SIGTERM / SIGHUP
into Ctrl-C (cleanups run, exit 128 + signal), a full disk and user errors into one line and exit 2."""

import errno
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_crossformer.cli import Terminated, run_cli

ROOT = Path(__file__).resolve().parents[1]


def refused(capsys, main, argv: list[str]) -> str:
    """stderr of an argparse refusal (SystemExit 2)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def option_of(args: tuple[str, ...]) -> str:
    return args[0].split("=")[0]


class BoundsCase:
    """Subclasses give `main` (argv -> exit code) and BAD: (arguments, text of the bound in the message)."""
    BAD: list[tuple[tuple[str, ...], str]] = []

    @staticmethod
    def main(argv: list[str]) -> int:
        raise NotImplementedError

    def test_refused_with_option_and_bound(self, bad, capsys):
        args, bound = bad
        err = refused(capsys, self.main, list(args))
        assert f"argument {option_of(args)}: " in err and bound in err, err
        assert "Traceback" not in err


def pytest_generate_tests(metafunc):
    if "bad" in metafunc.fixturenames:
        cases = metafunc.cls.BAD
        metafunc.parametrize("bad", cases, ids=[" ".join(args) for args, _ in cases])


class TestQat(BoundsCase):
    BAD = [
        (("--epochs", "0"), "must be >= 1, got 0"),
        (("--epochs", "-3"), "must be >= 1"),
        (("--epochs", "two"), "expected an integer >= 1, got 'two'"),
        (("--batch-size", "0"), "in [1, 65536]"),
        (("--batch-size", "100000"), "in [1, 65536]"),
        (("--lr", "0"), "must be > 0, got 0.0"),
        (("--lr=-1e-4",), "must be > 0"),
        (("--lr", "nan"), "must be a finite number > 0, got nan"),
        (("--lr", "inf"), "must be a finite number > 0"),
        (("--distill", "1.5"), "in [0, 1]"),
        (("--distill=-0.1",), "in [0, 1]"),
        (("--calib-size", "0"), "in [1, 10000000]"),
        (("--train-limit", "0"), "in [1, 10000000], got 0"),
        (("--train-limit", "-5"), "in [1, 10000000]"),
        (("--val-limit", "0"), "in [1, 10000000]"),
        (("--threads", "-1"), "in [0, 1024]"),
        (("--seed", "-1"), "in [0, 4294967295]"),
        (("--num-classes", "0"), "in [1, 100000]"),
        (("--img-size", "33"), "multiple of 32"),
        (("--img-size", "4096"), "in [32, 1024]"),
        (("--keep-float", "blocks.(0"), "invalid regular expression"),
    ]

    @staticmethod
    def main(argv):
        from quantize.__main__ import main

        return main(["qat", *argv])

    def test_train_limit_zero_is_refused_not_a_division_by_zero(self, capsys):
        err = refused(capsys, self.main, ["--train-limit", "0"])
        assert "ZeroDivisionError" not in err and "--train-limit: must be in [1, " in err

    def test_held_out_tenth_leaving_no_training_images_is_a_qat_error(self, tmp_path, capsys):
        # One image per class; --train-limit 1 keeps one, and every 10th image (the first) is held out.
        data = tmp_path / "folder"
        for c in range(10):
            (data / f"class{c}").mkdir(parents=True)
            Image.fromarray(np.full((28, 28), 25 * c, np.uint8)).save(data / f"class{c}" / "a.png")
        out = tmp_path / "q.safetensors"
        assert self.main(["--data", str(data), "--train-limit", "1", "--workdir", str(tmp_path / "work"),
                          "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert "error: no training images left" in err and "--val-data" in err
        assert not out.exists() and not (tmp_path / "work").exists()


class TestSensitivity(BoundsCase):
    BAD = [
        (("--calib-size", "0"), "in [1, 10000000]"),
        (("--limit", "1"), "in [2, 10000000], got 1"),
        (("--limit", "many"), "expected an integer in [2, 10000000]"),
        (("--batch", "1"), "in [2, 65536]"),
        (("--num-classes", "-1"), "in [1, 100000]"),
        (("--img-size", "33"), "nearest valid sizes: 32 or 64"),
        (("--img-size", "4096"), "in [32, 1024]"),
    ]

    @staticmethod
    def main(argv):
        from quantize.__main__ import main

        return main(["sensitivity", *argv])


class TestTrain(BoundsCase):
    BAD = [
        (("--epochs", "0"), "must be >= 1"),
        (("--batch-size", "0"), "in [1, 65536]"),
        (("--lr", "0"), "must be > 0"),
        (("--lr", "nan"), "finite number > 0"),
        (("--lr=-inf",), "finite number > 0"),
        (("--seed", "-1"), "in [0, 4294967295]"),
        (("--threads", "-2"), "in [0, 1024]"),
        (("--threads", "5000"), "in [0, 1024]"),
    ]

    @staticmethod
    def main(argv):
        from edge_crossformer.train import main

        return main(argv)


class TestLatency(BoundsCase):
    BAD = [
        (("--warmup", "-1"), "in [0, 1000000]"),
        (("--runs", "0"), "in [1, 1000000]"),
        (("--rounds", "0"), "in [1, 1000000]"),
        (("--threads", "0"), "in [1, 1024]"),
        (("--img-size", "33"), "multiple of 32"),
        (("--img-size", "4096"), "in [32, 1024]"),
        (("--runtimes", "onnxruntime,tflite"), "unknown runtime(s) 'tflite'; choose one or more of pytorch, "),
        (("--runtimes", ","), "no runtime given"),
    ]

    @staticmethod
    def main(argv):
        from benchmarks.__main__ import main

        return main(argv)


class TestAccuracy(BoundsCase):
    BAD = [
        (("--limit", "0"), "in [1, 10000000]"),
        (("--calib-size", "0"), "in [1, 10000000]"),
        (("--num-classes", "0"), "in [1, 100000]"),
        (("--img-size", "4096"), "in [32, 1024]"),
        (("--smooth-quant-alpha", "1.5"), "in [0, 1] (or negative to disable)"),
        (("--smooth-quant-alpha", "nan"), "finite number in [0, 1]"),
        (("--max-accuracy-drop", "100"), "in [0, 100) percentage points"),
        (("--max-accuracy-drop=-1",), "in [0, 100) percentage points"),
        (("--max-accuracy-drop", "inf"), "in [0, 100) percentage points"),
        (("--runtimes", "pytorch"), "unknown runtime(s) 'pytorch'; choose one or more of executorch, openvino, onnx"),
    ]

    @staticmethod
    def main(argv):
        from benchmarks.__main__ import main

        return main(["accuracy", *argv])


class TestAndroid(BoundsCase):
    BAD = [
        (("--runs", "0"), "in [1, 1000000]"),
        (("--warmup", "-1"), "in [0, 1000000]"),
        (("--threads", "-1"), "in [0, 1024]"),
        (("--timeout", "0"), "must be > 0"),
        (("--timeout", "inf"), "finite number > 0"),
    ]

    @staticmethod
    def main(argv):
        from benchmarks.__main__ import main

        return main(["android", *argv])


class TestBenchmarksRouting:
    """golden and merge take no counts; like every subcommand they run inside run_cli."""

    @pytest.mark.parametrize("command", ["merge", "golden"])
    def test_sigterm_and_full_disk(self, command, monkeypatch, capsys):
        import importlib

        from benchmarks.__main__ import SUBCOMMANDS, main

        module = importlib.import_module(SUBCOMMANDS[command])

        def terminated(argv):
            raise Terminated(signal.SIGTERM)

        monkeypatch.setattr(module, "run", terminated)
        assert main([command]) == 143
        assert "interrupted (SIGTERM)" in capsys.readouterr().err

        def disk_full(argv):
            raise OSError(errno.ENOSPC, "No space left on device", "benchmark_results/merged/merged.json")

        monkeypatch.setattr(module, "run", disk_full)
        assert main([command]) == 2
        assert "error: the disk is full" in capsys.readouterr().err


class TestRunCli:
    def test_sigterm_runs_the_cleanup_and_exits_143(self, capsys):
        cleaned = []

        def body():
            try:
                raise Terminated(signal.SIGTERM)
            finally:
                cleaned.append("done")

        assert run_cli(body) == 143 and cleaned == ["done"]
        assert "interrupted (SIGTERM)" in capsys.readouterr().err

    def test_sighup_exits_129_and_ctrl_c_130(self):
        def hangup():
            raise Terminated(signal.SIGHUP)

        def ctrl_c():
            raise KeyboardInterrupt

        assert run_cli(hangup) == 129 and run_cli(ctrl_c) == 130

    def test_full_disk_is_one_line_and_exit_2(self, capsys):
        def body():
            raise OSError(errno.ENOSPC, "No space left on device", "/out/model.onnx")

        assert run_cli(body) == 2
        err = capsys.readouterr().err
        assert "disk is full" in err and "/out/model.onnx" in err and "Traceback" not in err

    def test_other_os_errors_are_not_hidden(self):
        def body():
            raise PermissionError(errno.EACCES, "Permission denied")

        with pytest.raises(PermissionError):
            run_cli(body)

    def test_user_error_is_one_line_and_exit_2(self, capsys):
        class BadInput(ValueError):
            pass

        def body():
            raise BadInput("--data: no images in /nowhere; pass a folder of images")

        assert run_cli(body, (BadInput,)) == 2
        assert capsys.readouterr().err == "error: --data: no images in /nowhere; pass a folder of images\n"

    def test_signal_handlers_are_restored(self):
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
        assert run_cli(lambda: 0) == 0
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before

    def test_real_sigterm_to_a_process_removes_its_temporary_folder(self, tmp_path):
        work = tmp_path / "work"
        script = textwrap.dedent("""
            import shutil, sys, time
            from pathlib import Path
            from edge_crossformer.cli import run_cli

            def body():
                work = Path(sys.argv[1])
                work.mkdir()
                (work / "partial.bin").write_bytes(b"0" * 1024)
                try:
                    print("ready", flush=True)
                    time.sleep(60)
                finally:
                    shutil.rmtree(work)
                return 0

            sys.exit(run_cli(body))
        """)
        proc = subprocess.Popen([sys.executable, "-c", script, str(work)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            assert work.is_dir()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 143, err
        assert "interrupted (SIGTERM)" in err
        assert not work.exists()

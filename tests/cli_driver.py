"""Runs many `siamjax` command lines in one fresh interpreter, each with its own stdout and stderr.

Why: starting Python with jax, transformers and orbax costs 10-40 s of CPU on the 2-core test
machine, so the bad-input tests run their cases in one child process rather than one each. The
child is still a real process: each case's file descriptors 1 and 2 are redirected to files,
so whatever any library prints (Python, C++ logging, tracebacks) lands in that case's stderr.

    python tests/cli_driver.py CASES.json RESULTS.json
CASES.json is a list of steps run in order: an argv list (a `siamjax` command line), or
{"exec": "python code"} run here between commands (to damage files, say). RESULTS.json gets
one {"code", "out", "err"} per step ("code" is the int exit code, "crash: <type>" when an
exception escaped `main`, or the value the code left in `result`).
"""
import json
import os
import sys
import tempfile
import time
import traceback


def run_case(argv: list[str], main) -> dict:
    """One command line in this process, with fds 1 and 2 captured."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
        except BaseException as exc:  # noqa: BLE001 - reported to the test as a crash
            traceback.print_exc()
            code = f"crash: {type(exc).__name__}"
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode("utf-8", errors="replace"))
    return {"code": code, "out": texts[0], "err": texts[1]}


def main() -> None:
    from siamjax.cli import main as cli_main

    cases = json.loads(open(sys.argv[1]).read())
    results = []
    for case in cases:
        start = time.perf_counter()
        if isinstance(case, dict):
            scope: dict = {}
            exec(case["exec"], scope)  # noqa: S102 - test set-up code written by the tests
            results.append({"code": scope.get("result"), "out": "", "err": ""})
        else:
            results.append(run_case([str(a) for a in case], cli_main))
        results[-1]["seconds"] = round(time.perf_counter() - start, 2)
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()

"""Running ``cascade-adv`` in this process, for the CLI tests."""

from __future__ import annotations

import contextlib
import io
import os


@contextlib.contextmanager
def _chdir(path):
    """``contextlib.chdir`` (Python 3.11+) for Python 3.10 too."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_cli(argv, cwd) -> tuple[int, str, str]:
    """``cascade-adv ARGV`` in ``cwd``: (exit status, stdout, stderr)."""
    from cascade_adv.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with _chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()

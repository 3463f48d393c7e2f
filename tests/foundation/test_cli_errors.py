"""Whatever a command meets on disk (a permission, a vanished mount, a closed pipe) reaches the
operator as one line and an exit code, never a traceback."""

from __future__ import annotations

import argparse
import errno

import pytest

from trainconsole.console.common import run_guarded


def _raising(exc: BaseException):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        raise exc

    return run


@pytest.mark.edge(46)
def test_an_os_error_is_one_line_naming_the_path(capsys: pytest.CaptureFixture[str]) -> None:
    exc = PermissionError(errno.EACCES, "Permission denied", "/srv/queue/state.db")
    assert run_guarded(_raising(exc), argparse.Namespace()) == 1
    err = capsys.readouterr().err
    assert err == "trainconsole: /srv/queue/state.db: Permission denied\n"


@pytest.mark.edge(44)
def test_an_io_error_without_a_path_is_still_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_guarded(_raising(OSError(errno.EIO, "Input/output error")), argparse.Namespace()) == 1
    assert capsys.readouterr().err == "trainconsole: Input/output error\n"


def test_a_closed_pipe_is_not_an_error() -> None:
    assert run_guarded(_raising(BrokenPipeError(errno.EPIPE, "Broken pipe")), argparse.Namespace()) == 0

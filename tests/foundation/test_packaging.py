"""`pip install .` into a fresh virtual environment that already holds a package named `console`
(a PyPI package of that name exists): ours installs as `trainconsole.console` and
`trainconsole.engine`, the other package is left exactly as it was, and the `trainconsole`
command runs our code.

Kept cheap: `--no-deps` (the dependencies are not what is tested, and torch alone is gigabytes),
the other `console` installed from a wheel built here by hand, and the source copied out of the
checkout so the build's own folders never land in it. The build itself is a real isolated pip
build (it fetches setuptools from the package index like any user's install)."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

MARKER = "the other console package, untouched"


def _wheel(folder: Path) -> Path:
    """A minimal, valid wheel of a package named `console` (a module console/__init__.py)."""
    files = {
        "console/__init__.py": f"MARKER = {MARKER!r}\n".encode(),
        "console-9.9.9.dist-info/METADATA": b"Metadata-Version: 2.1\nName: console\nVersion: 9.9.9\n",
        "console-9.9.9.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("console-9.9.9.dist-info/RECORD,,")
    path = folder / "console-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("console-9.9.9.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def _source_copy(dest: Path) -> Path:
    """The checkout's tracked and new files (symlinks kept as links), without build leftovers."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src, dst = ROOT / rel, dest / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree, not yet in git
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    return dest


def _files(folder: Path) -> dict[Path, bytes]:
    """Each source file and its bytes (pip's byte-code cache aside)."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Never from the checkout: its own console/ folder would be imported as `console`.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=600,
                          cwd=cwd)


@pytest.mark.slow
def test_pip_install_leaves_an_existing_console_package_intact(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("needs git to list the checkout's files")
    venv = tmp_path / "venv"
    home = tmp_path / "home"
    home.mkdir()
    made = _run(sys.executable, "-m", "venv", venv, cwd=home)
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    pip = [py, "-m", "pip", "--disable-pip-version-check", "install", "--no-deps", "--quiet"]
    other = _run(*pip, _wheel(tmp_path), cwd=home)
    assert other.returncode == 0, other.stderr
    site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     cwd=home).stdout.strip())
    before = _files(site / "console")

    source = _source_copy(tmp_path / "src")
    ours = _run(*pip, ".", cwd=source)
    assert ours.returncode == 0, ours.stdout + ours.stderr

    assert _files(site / "console") == before  # not a byte of the other package changed, nothing added to it
    check = _run(py, "-c", "import console, trainconsole.console.cli as cli, trainconsole.engine.errors as e; "
                           "print(console.MARKER); print(cli.__file__); print(e.__file__)", cwd=home)
    assert check.returncode == 0, check.stderr
    marker, cli_file, engine_file = check.stdout.splitlines()
    assert marker == MARKER
    assert Path(cli_file).is_relative_to(site / "trainconsole" / "console")
    assert Path(engine_file).is_relative_to(site / "trainconsole" / "engine")
    assert not (site / "engine").exists()  # no bare top-level name of ours either
    listed = _run(py, "-m", "pip", "list", "--format=freeze", cwd=home)
    assert "console==9.9.9" in listed.stdout.splitlines()
    # The command resolves to our entry point and runs our code.
    point = _run(py, "-c", "from importlib.metadata import entry_points; "
                           "print(entry_points(group='console_scripts', name='trainconsole')['trainconsole'].value)",
                 cwd=home)
    assert point.stdout.strip() == "trainconsole.console.cli:main"
    version = _run(venv / "bin" / "trainconsole", "--version", cwd=home)
    assert version.returncode == 0 and version.stdout.strip() == "trainconsole 0.1.0", version.stderr

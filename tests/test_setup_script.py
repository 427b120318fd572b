"""tools/setup.sh's system-package stage on simulated machines.

Each test builds a fake machine in tmp_path: a bin/ folder that is the script's whole PATH, holding stubs for
apt-get, apt-cache, ldconfig, id, sudo, the Python interpreters and the C compiler. The stubs log their calls and
answer from marker files that the apt-get stub creates when it "installs" a package, so a second detection after
the install sees the result. Only --dry-run and --system-only are run: both stop before the venv and pip.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "tools" / "setup.sh"
BASH = shutil.which("bash")
EVERYTHING = ["libsndfile1", "python3.11", "python3.11-venv", "python3.11-dev", "gcc", "libc6-dev", "flite"]

# apt-get stub: logs its arguments; `install` refuses unknown packages like apt and otherwise creates what each
# package provides (executables in bin/, markers in state/ that the other stubs answer from).
APT_GET = """#!{python}
import os, sys
from pathlib import Path
root = Path({root!r})
with open(root / "calls.log", "a") as log:
    log.write("apt-get " + " ".join(sys.argv[1:]) + "\\n")
if os.environ.get("DEBIAN_FRONTEND") != "noninteractive":
    sys.exit("apt-get stub: DEBIAN_FRONTEND not set")
if "install" in sys.argv:
    packages = [a for a in sys.argv[sys.argv.index("install") + 1:] if not a.startswith("-")]
    for p in packages:
        if p not in {available!r}:
            sys.exit(f"E: Unable to locate package {{p}}")
    for p in packages:
        (root / "state" / p).touch()
        for name, text in {provides!r}.get(p, {{}}).items():
            (root / "bin" / name).write_text(text)
            (root / "bin" / name).chmod(0o755)
"""

# A fake interpreter answers setup.sh's probe (version, ensurepip, Python.h, compiler) from the state markers.
PYTHON = """#!/bin/sh
echo "{name} $1" >> {root}/calls.log
e=False; [ -e {root}/state/python3.11-venv ] && e=True
h=False; [ -e {root}/state/python3.11-dev ] && h=True
echo "{version} $e $h ${{CC:-x86_64-linux-gnu-gcc}}"
"""
COMPILER = "#!/bin/sh\nexit 0\n"


class Machine:
    def __init__(self, root: Path, *, installed=(), uid=0, sudo=False, apt=True, available=EVERYTHING, pythons=()):
        """``installed``: Debian packages present; ``pythons``: extra interpreters as (name, version)."""
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        (root / "state").mkdir()
        self.log = root / "calls.log"
        self.log.touch()
        self.provides = {
            "python3.11": {"python3.11": PYTHON.format(name="python3.11", version="3.11.2", root=root)},
            "gcc": {"gcc": COMPILER, "x86_64-linux-gnu-gcc": COMPILER},
            "flite": {"flite": COMPILER},
        }
        self._stub("ldconfig", f"[ -e {root}/state/libsndfile1 ] && echo '\tlibsndfile.so.1 (libc6,x86-64) => x'\n")
        self._stub("id", f"echo {uid}\n")
        self._stub("apt-cache", f'case "$2" in {"|".join(available)}) exit 0;; esac\nexit 100\n')
        # The real env, so that `env VAR=... apt-get` reaches the stub through the stub-only PATH.
        (self.bin / "env").symlink_to(shutil.which("env"))
        if sudo:
            self._stub("sudo", f'echo "sudo $*" >> {self.log}\nexec "$@"\n')
        if apt:
            text = APT_GET.format(
                python=sys.executable, root=str(root), available=list(available), provides=self.provides
            )
            self._stub("apt-get", text, shebang=False)
        for name, version in pythons:
            self._stub(name, PYTHON.format(name=name, version=version, root=root), shebang=False)
        for package in installed:
            (root / "state" / package).touch()
            for name, text in self.provides.get(package, {}).items():
                self._stub(name, text, shebang=False)

    def _stub(self, name: str, body: str, *, shebang: bool = True) -> None:
        path = self.bin / name
        path.write_text(("#!/bin/sh\n" if shebang else "") + body)
        path.chmod(0o755)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        # PATH is the stub folder alone: no real apt-get, compiler or Python can be reached.
        return subprocess.run(
            [BASH, str(SETUP), *args], env={"PATH": str(self.bin), **env}, capture_output=True, text=True, timeout=30
        )

    def calls(self, prefix: str = "") -> list[str]:
        return [c for c in self.log.read_text().splitlines() if c.startswith(prefix)]


def _check_no_venv_or_pip(m: Machine) -> None:
    # Interpreters are only ever asked the probe (`-c`), never `-m venv` or `-m pip`.
    assert all(c.split()[1] == "-c" for c in m.calls("python")), m.calls("python")


@pytest.mark.parametrize("mode", ["--dry-run", "--system-only"])
def test_nothing_missing_installs_nothing(tmp_path, mode):
    m = Machine(tmp_path, installed=EVERYTHING)
    r = m.run(mode)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (
        "setup: system packages: nothing to install "
        "(Python 3.11: python3.11, C compiler: x86_64-linux-gnu-gcc, libsndfile, flite)"
    )
    assert m.calls("apt-get") == []
    _check_no_venv_or_pip(m)


def test_everything_missing_dry_run_names_the_apt_command(tmp_path):
    m = Machine(tmp_path)
    r = m.run("--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (
        "setup: missing libsndfile.so.1, Python 3.11, C compiler gcc, flite; "
        f"would run: apt-get install -y {' '.join(EVERYTHING)}"
    )
    assert m.calls("apt-get") == []


def test_everything_missing_as_root_installs_and_redetects(tmp_path):
    m = Machine(tmp_path)
    r = m.run("--system-only")
    assert r.returncode == 0, r.stderr
    assert m.calls("apt-get") == ["apt-get update -qq", f"apt-get install -y -qq {' '.join(EVERYTHING)}"]
    assert f"installing {' '.join(EVERYTHING)} with apt-get" in r.stdout
    # The interpreter apt just installed is the one probed the second time.
    assert m.calls("python3.11") == ["python3.11 -c"]
    _check_no_venv_or_pip(m)


@pytest.mark.parametrize(
    ("installed", "expected"),
    [
        # python:3.11-slim: its own Python with headers and ensurepip, but no compiler.
        (["libsndfile1", "python3.11", "python3.11-venv", "python3.11-dev", "flite"], ["gcc", "libc6-dev"]),
        # Debian 12 with its python3.11 only.
        (["python3.11"], ["libsndfile1", "python3.11-venv", "python3.11-dev", "gcc", "libc6-dev", "flite"]),
        (["libsndfile1", "python3.11", "python3.11-venv", "gcc", "flite"], ["python3.11-dev"]),
        # Everything but the speech synthesizer of `seqwin prepare voices`.
        (EVERYTHING[:-1], ["flite"]),
    ],
)
def test_installs_only_what_is_missing(tmp_path, installed, expected):
    m = Machine(tmp_path, installed=installed)
    r = m.run("--system-only")
    assert r.returncode == 0, r.stderr
    assert m.calls("apt-get install") == [f"apt-get install -y -qq {' '.join(expected)}"]


@pytest.mark.parametrize("mode", ["--dry-run", "--system-only"])
def test_not_root_without_sudo_names_the_packages(tmp_path, mode):
    m = Machine(tmp_path, installed=["libsndfile1", "python3.11", "flite"], uid=1000)
    r = m.run(mode)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "as root run 'apt-get install python3.11-venv python3.11-dev gcc libc6-dev'" in lines[0]
    assert "not root, no sudo" in lines[0]
    assert m.calls("apt-get") == []


def test_not_root_with_sudo_installs_through_sudo(tmp_path):
    m = Machine(tmp_path, installed=["python3.11", "python3.11-venv", "python3.11-dev", "gcc", "flite"], uid=1000,
                sudo=True)
    assert "would run: sudo apt-get install -y libsndfile1" in m.run("--dry-run").stdout
    r = m.run("--system-only")
    assert r.returncode == 0, r.stderr
    assert m.calls("sudo") == [
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq",
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libsndfile1",
    ]


def test_no_apt_get_names_the_packages(tmp_path):
    m = Machine(tmp_path, installed=["libsndfile1", "python3.11", "python3.11-venv", "python3.11-dev", "flite"],
                apt=False)
    r = m.run("--system-only")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "setup: missing C compiler x86_64-linux-gnu-gcc: install the Debian/Ubuntu packages gcc libc6-dev "
        "(or their equivalents; no apt-get here), then rerun"
    ]


def test_only_another_python_and_apt_has_no_3_11(tmp_path):
    m = Machine(
        tmp_path,
        installed=EVERYTHING[:1] + ["gcc"],
        pythons=[("python3", "3.12.3")],
        available=["gcc", "libc6-dev", "libsndfile1"],
    )
    assert "missing Python 3.11 (python3 is Python 3.12.3)" in m.run("--dry-run").stdout
    r = m.run("--system-only")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "setup: seqwin needs Python 3.11 (python3 is Python 3.12.3) and apt has no python3.11 package here: "
        "install Python 3.11 (e.g. with pyenv or uv) and rerun with PYTHON=/path/to/python3.11"
    ]
    assert m.calls("apt-get install") == []


def test_python_variable_pointing_at_another_version(tmp_path):
    m = Machine(tmp_path, installed=EVERYTHING, pythons=[("python3.12", "3.12.3")])
    r = m.run("--dry-run", PYTHON="python3.12")
    assert r.returncode == 1
    assert r.stderr.strip() == "setup: seqwin needs Python 3.11, but PYTHON=python3.12 is Python 3.12.3"


def test_apt_install_that_does_not_help_is_reported(tmp_path):
    # The interpreter names a compiler that the gcc package does not provide (CC set by the user).
    m = Machine(tmp_path, installed=EVERYTHING[:4])
    r = m.run("--system-only", CC="clang")
    assert r.returncode == 1
    assert r.stderr.strip() == "setup: after apt-get install, still missing C compiler clang"


def test_unknown_option(tmp_path):
    r = Machine(tmp_path).run("--install")
    assert r.returncode == 2
    assert "unknown option '--install'" in r.stderr


def test_stubs_shadow_the_real_tools(tmp_path):
    # Guards the fixture itself: the script sees the stubs, never this machine's apt-get or compiler.
    m = Machine(tmp_path)
    r = subprocess.run(
        [BASH, "-c", "command -v apt-get gcc cc python3 || true"],
        env={"PATH": str(m.bin)},
        capture_output=True,
        text=True,
    )
    assert r.stdout.split() == [str(m.bin / "apt-get")]

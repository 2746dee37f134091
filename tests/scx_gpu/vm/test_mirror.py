"""The Debian archive is read from the machine's apt sources, never written in."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from scx_gpu.errors import EnvironmentProblem
from scx_gpu.vm.mirror import ENV_OVERRIDE, debian_mirror

REPO = Path(__file__).resolve().parents[3]
BOOKWORM = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n'
DEB822 = """\
Types: deb deb-src
# a comment between fields
URIs: http://mirror.example/debian/
  http://second.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
"""
DISABLED_DEB822 = """\
Enabled: no
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
"""
ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb-src http://src-only.example/debian bookworm main
deb http://security.example/debian-security bookworm-security main
deb [arch=amd64 signed-by=/k.gpg] http://proxy.local:3142/debian bookworm main
"""


def _apt(tmp_path: Path, files: dict[str, str]) -> tuple[Path, Path]:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (etc / name).write_text(text)
    release = tmp_path / "os-release"
    release.write_text(BOOKWORM)
    return etc, release


def test_deb822_sources_first_uri_of_the_main_suite(tmp_path: Path):
    etc, release = _apt(tmp_path, {"sources.list.d/debian.sources": DEB822})
    assert debian_mirror({}, etc, release) == "http://mirror.example/debian"


def test_one_line_list_with_options_skips_comments_src_and_security(tmp_path: Path):
    etc, release = _apt(tmp_path, {"sources.list": ONE_LINE})
    assert debian_mirror({}, etc, release) == "http://proxy.local:3142/debian"


def test_sources_list_comes_before_the_parts_and_disabled_stanzas_are_skipped(tmp_path: Path):
    etc, release = _apt(tmp_path, {"sources.list.d/00-off.sources": DISABLED_DEB822,
                                   "sources.list.d/debian.sources": DEB822,
                                   "sources.list": ONE_LINE})
    assert debian_mirror({}, etc, release) == "http://proxy.local:3142/debian"
    (etc / "sources.list").unlink()
    assert debian_mirror({}, etc, release) == "http://mirror.example/debian"


def test_environment_overrides_the_sources(tmp_path: Path):
    etc, release = _apt(tmp_path, {"sources.list": ONE_LINE})
    env = {ENV_OVERRIDE: "http://override.example/debian/"}
    assert debian_mirror(env, etc, release) == "http://override.example/debian"


def test_no_main_suite_is_an_error_that_says_what_to_do(tmp_path: Path):
    etc, release = _apt(tmp_path, {"sources.list": "deb http://x.example/debian-security "
                                                   "bookworm-security main\n"})
    with pytest.raises(EnvironmentProblem, match=ENV_OVERRIDE):
        debian_mirror({}, etc, release)


def test_runs_before_the_venv_exists_with_the_system_python():
    """setup-debian.sh asks it with the system python3, before `pip install`."""
    proc = subprocess.run([sys.executable, "-S", "-E", "-m", "scx_gpu.vm.mirror"], cwd=REPO,
                          capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", ENV_OVERRIDE: "http://env.example/debian"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "http://env.example/debian\n"


def test_no_archive_host_is_written_into_the_code():
    tracked = subprocess.run(["git", "ls-files", "*.py", "*.sh", "Makefile", "*.c"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    host = re.compile(r"https?://[\w.-]+(:\d+)?/debian")
    offenders = [name for name in tracked
                 if not name.startswith("tests/") and host.search((REPO / name).read_text())]
    assert offenders == []

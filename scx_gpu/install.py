"""`scx-gpu install-service`: the systemd unit and /etc/default/scx-gpu."""

import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from scx_gpu.errors import EnvironmentProblem

UNIT = Path("etc/systemd/system/scx-gpu.service")
DEFAULTS = Path("etc/default/scx-gpu")


def _command() -> str:
    found = shutil.which("scx-gpu") or str(Path(sys.argv[0]).resolve())
    if not Path(found).is_file():
        raise EnvironmentProblem("cannot find the scx-gpu command to put in the unit: install "
                                 "scx-gpu (pip install) so that it is on PATH")
    return found


def install(root: Path) -> list[str]:
    """Write the unit (replaced) and the defaults (kept if present); what was done."""
    data = resources.files("scx_gpu.service")
    done = []
    unit, defaults = root / UNIT, root / DEFAULTS
    try:
        unit.parent.mkdir(parents=True, exist_ok=True)
        unit.write_bytes(data.joinpath("scx-gpu.service").read_bytes())
        done.append(f"wrote {unit}")
        if defaults.exists():
            done.append(f"kept {defaults} (your settings)")
        else:
            defaults.parent.mkdir(parents=True, exist_ok=True)
            text = data.joinpath("scx-gpu.default").read_text()
            defaults.write_text(text.replace("@SCX_GPU_BIN@", _command()))
            done.append(f"wrote {defaults}")
    except PermissionError as exc:
        raise EnvironmentProblem(f"{exc.filename}: permission denied: run as root") from exc
    if root == Path("/") and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
        done.append("systemctl daemon-reload; start it with: systemctl enable --now scx-gpu")
    return done

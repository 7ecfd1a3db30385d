"""`llm-backend service install|uninstall`: a systemd unit that runs `llm-backend serve` at boot.

The unit runs as root (host preparation turns swap on, pauses OOM daemons and drops the page
cache), is ordered after the Docker engine when the profile's runtime needs it, restarts on
failure, and sends SIGTERM to `serve` alone (KillMode=mixed) so the door drains and stops the
backend itself; TimeoutStopSec leaves room for the drain and the backend's stop grace.
Directives: systemd.service(5), systemd.kill(5), systemd.unit(5).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llm_backend.config import Profile
from llm_backend.errors import BackendError
from llm_backend.runtimes import get_runtime

UNIT_NAME = "llm-backend.service"
UNIT_DIR = Path("/etc/systemd/system")
MARKER = "# Written by `llm-backend service install`; removed by `llm-backend service uninstall`."
STOP_MARGIN_S = 30


@dataclass(frozen=True)
class ServiceResult:
    """What install or uninstall did."""

    action: str  # "installed" | "uninstalled" | "absent"
    unit_path: str
    enabled: bool = False
    notes: tuple[str, ...] = ()


def stop_timeout_s(profile: Profile) -> int:
    """Drain grace + the backend's stop grace + a margin: systemd must not SIGKILL a drain."""
    return int(profile.serve.drain_grace_s + profile.stop_grace_s + STOP_MARGIN_S)


def render_unit(
    profile: Profile,
    *,
    python: str | None = None,
    working_directory: Path | None = None,
    environment: dict[str, str] | None = None,
) -> str:
    """The unit file's text for `profile`."""
    after = ["network-online.target", *get_runtime(profile.runtime).systemd_after]
    requires = list(get_runtime(profile.runtime).systemd_after)
    interpreter = python or sys.executable
    command = shlex.join([interpreter, "-m", "llm_backend", "serve", "--profile", profile.name])
    lines = [
        MARKER,
        "[Unit]",
        f"Description=llm-backend serve: front door and supervisor for {profile.name}",
        "Documentation=man:systemd.service(5)",
        f"After={' '.join(after)}",
        "Wants=network-online.target",
    ]
    if requires:
        lines.append(f"Requires={' '.join(requires)}")
    lines += [
        "",
        "[Service]",
        "Type=simple",
        # Host preparation needs root: swapon, sysctl vm.drop_caches, pausing OOM daemons.
        "User=root",
        f"ExecStart={command}",
    ]
    if working_directory is not None:
        lines.append(f"WorkingDirectory={working_directory}")
    for key, value in sorted((environment or {}).items()):
        lines.append(f"Environment={shlex.quote(f'{key}={value}')}")
    lines += [
        "Environment=NO_COLOR=1",
        "Restart=on-failure",
        "RestartSec=5",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={stop_timeout_s(profile)}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def verify(unit_path: Path) -> None:
    """Run `systemd-analyze verify` on a unit file; raise with its output when it objects."""
    analyzer = shutil.which("systemd-analyze")
    if analyzer is None:
        raise BackendError(
            "systemd-analyze is not installed, so the unit cannot be checked",
            remedy="apt-get install systemd",
        )
    completed = subprocess.run(
        [analyzer, "verify", str(unit_path)], capture_output=True, text=True, timeout=60,
    )
    problems = [
        line for line in (completed.stdout + completed.stderr).splitlines()
        if unit_path.name in line or completed.returncode != 0
    ]
    if completed.returncode != 0 or problems:
        raise BackendError(
            f"systemd-analyze verify {unit_path} found problems: " + "; ".join(problems),
            remedy="report this as a bug with the unit file attached",
        )


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def install(
    profile: Profile,
    *,
    unit_dir: Path = UNIT_DIR,
    working_directory: Path | None = None,
    environment: dict[str, str] | None = None,
) -> ServiceResult:
    """Write the unit (0644), verify it, and enable it when systemd runs this machine."""
    path = unit_dir / UNIT_NAME
    if path.exists() and MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        raise BackendError(
            f"{path} exists and was not written by llm-backend",
            remedy=f"move it away first (it is not ours to replace): mv {path} {path}.orig",
        )
    text = render_unit(profile, working_directory=working_directory, environment=environment)
    # Verified in a folder of its own before it goes in place: a unit systemd-analyze objects
    # to (or no systemd-analyze) never replaces or removes the one installed before.
    with tempfile.TemporaryDirectory(prefix="llm-backend-unit-") as scratch:
        candidate = Path(scratch) / UNIT_NAME
        candidate.write_text(text, encoding="utf-8")
        try:
            verify(candidate)
        except BackendError as error:
            raise BackendError(error.message.replace(str(candidate), str(path)),
                               remedy=error.remedy) from None
    unit_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.chmod(0o644)
    temporary.rename(path)
    notes: list[str] = []
    enabled = False
    if _systemd_running() and unit_dir == UNIT_DIR:
        for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", UNIT_NAME]):
            completed = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            if completed.returncode != 0:
                raise BackendError(
                    f"{shlex.join(argv)} failed (exit {completed.returncode}): "
                    f"{completed.stderr.strip()[-400:]}",
                    remedy=f"run it yourself as root; the unit is in {path}",
                )
        enabled = True
        notes.append(f"start it now: systemctl start {UNIT_NAME}")
    else:
        notes.append("systemd does not run this machine: the unit was written, not enabled")
    return ServiceResult("installed", str(path), enabled, tuple(notes))


def uninstall(*, unit_dir: Path = UNIT_DIR) -> ServiceResult:
    """Disable and remove our unit; a unit of the same name that is not ours stays."""
    path = unit_dir / UNIT_NAME
    if not path.exists():
        return ServiceResult("absent", str(path))
    if MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        raise BackendError(
            f"{path} was not written by llm-backend; leaving it alone",
            remedy=f"remove it yourself if it should go: rm {path}",
        )
    notes: list[str] = []
    if _systemd_running() and unit_dir == UNIT_DIR:
        subprocess.run(["systemctl", "disable", "--now", UNIT_NAME], capture_output=True,
                       text=True, timeout=120)
    path.unlink()
    if _systemd_running() and unit_dir == UNIT_DIR:
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True,
                       timeout=60)
        notes.append("disabled and stopped")
    return ServiceResult("uninstalled", str(path), False, tuple(notes))

"""`doctor` and `start`'s preflight on this machine (no GPU): findings, failures, no changes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Env, port_is_free, wait_for

SGLANG = "gpt-oss-120b-eagle3"


def checks_by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in report["checks"]}


def doctor_json(world: Env, *args: str) -> tuple[int, dict[str, Any]]:
    completed = world.run("doctor", "--json", *args, timeout=120)
    return completed.returncode, json.loads(completed.stdout)


def host_snapshot(world: Env) -> dict[str, Any]:
    """What a refused start must leave as it was: our state files, the built-in profiles'
    swap file, and our SGLang container (other tests change swap and containers meanwhile)."""
    containers = None
    if shutil.which("docker"):
        listed = subprocess.run(
            ["docker", "ps", "-a", "--filter", "name=trollama-sglang", "--format", "{{.Names}}"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        containers = sorted(listed.stdout.split()) if listed.returncode == 0 else None
    swap_file = "/var/lib/llm-backend/swapfile"
    return {
        "state": sorted(
            p.name for p in world.state_dir.iterdir()
            if p.name != "logs" and not p.name.endswith(".lock")
        ),
        "swap_on": swap_file in Path("/proc/swaps").read_text(),
        "swap_file": Path(swap_file).exists(),
        "containers": containers,
    }


def test_cpu_profile_passes_and_reports_the_missing_gpu(world: Env) -> None:
    code, report = doctor_json(world, "--profile", "smollm2-cpu")
    assert code == 0, report
    assert report["ok"] is True and report["profile"] == "smollm2-cpu"
    checks = checks_by_name(report)
    for name in ("memory", "port", "llama_server", "model_file"):
        assert checks[name]["status"] == "pass", checks[name]
    gpu = checks["gpu"]
    if report["gpus"]["devices"]:  # on a GPU machine the same check simply passes
        assert gpu["status"] == "pass"
    else:
        assert gpu["status"] == "warn"
        assert "no NVIDIA GPU" in gpu["summary"] and gpu["fix"]
        assert report["gpus"]["problem"]
        assert report["hardware"]["gpus"] == []
    # Docker checks do not apply to a native CPU profile.
    assert "docker_engine" not in checks and "nvidia_runtime" not in checks

    text = world.run("doctor", "--profile", "smollm2-cpu", timeout=120)
    assert text.returncode == 0
    assert "warn    gpu" in text.stdout
    assert "fix:" in text.stdout
    counts = report["counts"]
    assert text.stdout.strip().splitlines()[-1].startswith(
        f"ok: {counts['pass']} pass, {counts['warn']} warn, 0 fail"
    )


def test_auto_explains_why_it_chose_the_cpu_profile(world: Env) -> None:
    code, report = doctor_json(world)
    assert code == 0
    assert report["auto"]["profile"] == "smollm2-cpu"
    reasons = report["auto"]["reasons"]
    assert any(r.startswith(f"not {SGLANG}: no NVIDIA GPU found") for r in reasons)
    assert any(f"--profile {SGLANG}" in r for r in reasons)
    text = world.run("doctor", timeout=120)
    assert "auto: chose smollm2-cpu" in text.stdout


def test_pinned_default_profile_is_used_without_auto(world: Env) -> None:
    world.write_config('default_profile = "smollm2-cpu"\n')
    code, report = doctor_json(world)
    assert code == 0
    assert report["profile"] == "smollm2-cpu" and report["auto"] is None


def test_json_shape_is_stable(world: Env) -> None:
    _, report = doctor_json(world, "--profile", "smollm2-cpu")
    assert set(report) == {
        "schema", "profile", "engine", "runtime", "ok", "counts", "checks", "duration_s",
        "auto", "gpus", "hardware", "artifacts",
    }
    assert report["schema"] == 1
    assert set(report["counts"]) == {"pass", "warn", "fail", "skipped"}
    for check in report["checks"]:
        assert set(check) == {"name", "status", "summary", "fix", "details"}
        assert check["status"] in ("pass", "warn", "fail", "skipped")
        if check["status"] in ("warn", "fail"):
            assert check["fix"], check


def test_port_taken_fails_the_check_and_start_changes_nothing(world: Env) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(world.port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: not port_is_free(world.port), timeout=10)
        code, report = doctor_json(world, "--profile", "smollm2-cpu")
        assert code == 1 and report["ok"] is False
        port = checks_by_name(report)["port"]
        assert port["status"] == "fail"
        assert f"in use by pid {holder.pid}" in port["summary"]
        assert "--port" in port["fix"]

        before = host_snapshot(world)
        started = world.run("start", "--profile", "smollm2-cpu")
        assert started.returncode != 0
        assert "preflight for smollm2-cpu failed (port)" in started.stderr
        assert "nothing on the host was changed" in started.stderr
        assert "--skip-checks port" in started.stderr
        assert host_snapshot(world) == before
        assert holder.poll() is None  # the holder was left alone

        # Skipping the check gets past the preflight (with a warning); the lifecycle's own
        # guard still refuses to launch onto a taken port.
        skipped = world.run("start", "--profile", "smollm2-cpu", "--skip-checks", "port")
        assert skipped.returncode != 0
        assert "warning: port" in skipped.stderr and "skipped by --skip-checks" in skipped.stderr
        assert "preflight" not in skipped.stderr
        assert host_snapshot(world) == before
    finally:
        holder.terminate()
        holder.wait(timeout=10)


def test_missing_binary_fails_and_start_changes_nothing(world: Env) -> None:
    missing = world.root / "no-such-llama-server"
    world.env["LLM_BACKEND_BINARY"] = str(missing)
    code, report = doctor_json(world, "--profile", "smollm2-cpu")
    assert code == 1
    check = checks_by_name(report)["llama_server"]
    assert check["status"] == "fail"
    assert f"{missing} does not exist" in check["summary"] and check["fix"]
    before = host_snapshot(world)
    started = world.run("start", "--profile", "smollm2-cpu")
    assert started.returncode != 0
    assert "preflight for smollm2-cpu failed (llama_server)" in started.stderr
    assert host_snapshot(world) == before
    assert not missing.exists()


def test_no_binary_anywhere_is_buildable_or_says_what_is_missing(world: Env) -> None:
    env = dict(world.env)
    env.pop("LLM_BACKEND_BINARY")
    env["XDG_CACHE_HOME"] = str(world.root / "empty-cache")
    env["PATH"] = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep)
        if not (Path(p) / "llama-server").exists()
    )
    world.env = env
    _, report = doctor_json(world, "--profile", "smollm2-cpu")
    check = checks_by_name(report)["llama_server"]
    buildable = shutil.which("cmake", path=env["PATH"]) and shutil.which("c++", path=env["PATH"])
    assert check["status"] == ("warn" if buildable else "fail")
    assert "llm-backend engine install llama.cpp" in check["fix"]
    # Without cmake or a compiler on PATH it cannot be built: a failure naming them.
    world.env = {**env, "PATH": str(world.root / "empty-bin")}
    _, report = doctor_json(world, "--profile", "smollm2-cpu")
    check = checks_by_name(report)["llama_server"]
    assert check["status"] == "fail"
    assert "cmake and c++ missing" in check["summary"]
    assert not (world.root / "empty-cache").exists()


def test_missing_model_file_fails_and_start_changes_nothing(world: Env) -> None:
    missing = world.root / "missing.gguf"
    world.write_config(
        f'[profiles.nomodel]\nextends = "smollm2-cpu"\nmodel = "{missing}"\nmodel_package = ""\n'
    )
    code, report = doctor_json(world, "--profile", "nomodel")
    assert code == 1
    check = checks_by_name(report)["model_file"]
    assert check["status"] == "fail"
    assert f"model file {missing} does not exist" == check["summary"]
    assert ".gguf" in check["fix"]
    before = host_snapshot(world)
    started = world.run("start", "--profile", "nomodel")
    assert started.returncode != 0
    assert "failed (model_file)" in started.stderr
    assert "failure: model_not_found" in started.stderr
    assert host_snapshot(world) == before


def dead_docker_host(world: Env) -> str:
    """A DOCKER_HOST that names a socket where no engine is (the file does not exist)."""
    path = world.root / "docker.sock"
    return f"unix://{path}"


def test_docker_profile_without_engine_fails_and_start_changes_nothing(world: Env) -> None:
    if shutil.which("docker") is None:
        pytest.fail("the docker CLI is needed (apt-get install docker.io)")
    world.env["DOCKER_HOST"] = dead_docker_host(world)
    code, report = doctor_json(world, "--profile", SGLANG)
    assert code == 1
    checks = checks_by_name(report)
    engine = checks["docker_engine"]
    assert engine["status"] == "fail"
    assert world.env["DOCKER_HOST"] in engine["summary"]
    assert "DOCKER_HOST" in engine["fix"]
    if not report["gpus"]["devices"]:
        assert checks["gpu"]["status"] == "fail"  # SGLang needs a GPU; there is none here
    # Not checkable without an engine: a warning that points at the engine, not a second failure.
    assert checks["nvidia_runtime"]["status"] == "warn"
    assert checks["image"]["status"] == "warn"
    assert "docker_engine" in checks["image"]["fix"]
    assert checks["model_cache"]["status"] in ("warn", "pass", "fail")
    # TIKTOKEN_ENCODINGS_BASE is set, so a missing encoding file is a failure (pull fixes it).
    encoding = Path.home() / "tiktoken_encodings" / "o200k_base.tiktoken"
    assert checks["tiktoken"]["status"] == ("pass" if encoding.is_file() else "fail")
    if not encoding.is_file():
        assert checks["tiktoken"]["fix"] == f"llm-backend pull --profile {SGLANG}"

    before = host_snapshot(world)
    started = world.run("start", "--profile", SGLANG)
    assert started.returncode != 0
    assert "docker_engine" in started.stderr and "nothing on the host was changed" in started.stderr
    # A CPU profile in Docker fails the same way, on the engine alone.
    docker_cpu = world.run("start", "--profile", "smollm2-cpu", "--runtime", "docker")
    assert docker_cpu.returncode != 0
    assert "preflight for smollm2-cpu failed (docker_engine)" in docker_cpu.stderr
    world.env.pop("DOCKER_HOST")
    assert host_snapshot(world) == before  # no swap file turned on, no container, no record


def test_unknown_check_name_is_refused(world: Env) -> None:
    result = world.run("start", "--profile", "smollm2-cpu", "--skip-checks", "nope")
    assert result.returncode == 2
    assert "unknown check 'nope'" in result.stderr and "llama_server" in result.stderr
    assert "fix:" in result.stderr
    assert port_is_free(world.port)


def test_dry_run_shows_every_check_and_fails_as_start_would(world: Env) -> None:
    """A dry run shows all checks, and exits as the real start would (1 for a failed check),
    so a script can use it as a check; the plan is still shown."""
    world.env["DOCKER_HOST"] = dead_docker_host(world)
    result = world.run("start", "--profile", SGLANG, "--dry-run")
    assert "preflight checks" in result.stderr
    assert "fail    docker_engine" in result.stderr
    assert result.returncode == 1, result.stderr
    assert "would NOT start" in result.stdout and "launch (docker)" in result.stdout
    assert "error: dry run: a real start would fail: preflight for" in result.stderr
    assert "docker_engine" in result.stderr.split("error:")[1]


def test_status_has_a_gpu_part(world: Env) -> None:
    completed = world.run("status", "--json")
    data = json.loads(completed.stdout)
    assert data["gpus"]["nvml_available"] is False
    assert data["gpus"]["devices"] == [] and data["gpus"]["problem"]
    stopped = world.run("stop", "--force", check=True)
    assert "nothing was running" in stopped.stdout
    assert "warning" not in stopped.stderr


# --- GPU leftovers after stop (NVML's answer replayed; the processes are real) -----------------


def replayed_report(pid: int) -> Any:
    """The NVML answer recorded on an H200 while one process held a 1 GiB tensor (see
    docs/doctor.md), with that process's pid replaced by `pid`. Stands in for NVML, which
    needs an NVIDIA driver this machine lacks; everything else here is real."""
    from llm_backend.gpu import GpuDevice, GpuProcess, GpuReport

    recorded = json.loads((Path(__file__).parent / "data" / "hardware" /
                           "h200-nvml-status.json").read_text())
    devices = []
    for device in recorded["devices"]:
        processes = tuple(
            GpuProcess(**{**{k: v for k, v in p.items() if k != "ours"}, "pid": pid})
            for p in device["processes"]
        )
        devices.append(GpuDevice(**{**device, "processes": processes}))
    values = {**recorded, "devices": tuple(devices), "notes": tuple(recorded["notes"])}
    return GpuReport(**values)


def test_lingering_gpu_process_is_remembered_then_ended_by_pid(tmp_path: Path) -> None:
    from llm_backend.gpu import LEFTOVERS_FILE, process_tree, settle_after_stop

    # A child that ignores SIGTERM, like a stuck SGLang scheduler.
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal,time; signal.signal(signal.SIGTERM, "
         "signal.SIG_IGN); print('up', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True,
    )
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        assert child.stdout is not None and child.stdout.readline() == "up\n"
        tree = process_tree(child.pid)
        assert [owned.pid for owned in tree] == [child.pid]
        report = replayed_report(child.pid)

        warned = settle_after_stop(tmp_path, tree, force=False, report=report)
        assert [owned.pid for owned in warned.lingering] == [child.pid]
        assert warned.ended == () and child.poll() is None
        saved = json.loads((tmp_path / LEFTOVERS_FILE).read_text())
        assert saved["processes"][0]["pid"] == child.pid

        started = time.monotonic()
        forced = settle_after_stop(tmp_path, [], force=True, report=report)
        assert [owned.pid for owned in forced.ended] == [child.pid]
        assert forced.still_running == ()
        # SIGTERM ignored, so SIGKILL after the grace. The stop's psutil.wait_procs may reap our
        # own child first, and Popen then reads 0 (ECHILD); it sleeps 300 s, so either way it
        # was killed.
        assert child.wait(timeout=10) in (-9, 0)
        assert time.monotonic() - started < 15
        assert not (tmp_path / LEFTOVERS_FILE).exists()
        assert bystander.poll() is None  # only the listed pid was touched
    finally:
        for process in (child, bystander):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def test_reused_pid_is_not_ended(tmp_path: Path) -> None:
    """A remembered pid whose start time differs is someone else's process now."""
    from llm_backend.gpu import OwnedProcess, settle_after_stop

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        stale = OwnedProcess(pid=other.pid, create_time=1.0, name="python3")
        result = settle_after_stop(tmp_path, [stale], force=True,
                                   report=replayed_report(other.pid))
        assert result.lingering == () and result.ended == ()
        assert other.poll() is None
    finally:
        other.kill()
        other.wait(timeout=10)


# --- the memory check on GPU answers (NVML replayed from the H200 recording) ------------------


def memory_check(report: Any, profile_name: str = SGLANG) -> Any:
    from llm_backend.config import ConfigSet, builtin_layer
    from llm_backend.doctor import Context, check_memory

    profile = ConfigSet(layers=[builtin_layer()]).resolve(profile_name).profile
    ctx = Context(profile, host_prep=False, probe_binaries=False)
    ctx.__dict__["gpus"] = report  # what `cached_property` would have read from NVML
    return check_memory(ctx)


def test_memory_check_passes_on_the_recorded_h200() -> None:
    result = memory_check(replayed_report(os.getpid()))
    assert result.status in ("pass", "warn")  # warn only if this host's RAM is short
    assert "NVIDIA H200: 138.3 GiB free of 140.4 GiB" in result.summary


def test_memory_check_fails_when_other_processes_hold_the_gpu() -> None:
    import dataclasses

    report = replayed_report(os.getpid())
    device = dataclasses.replace(report.devices[0], memory_available_bytes=40 * 1024**3)
    result = memory_check(dataclasses.replace(report, devices=(device,)))
    assert result.status == "fail"
    assert f"held by pid {os.getpid()}" in result.summary
    assert "stop --force" in result.fix


def test_memory_check_on_unified_memory_reads_meminfo() -> None:
    """A GB10-style device (memory not from NVML) on this machine's /proc/meminfo."""
    import dataclasses

    from llm_backend.host.meminfo import read_meminfo

    report = replayed_report(os.getpid())
    meminfo = read_meminfo()
    spark = dataclasses.replace(
        report.devices[0], name="NVIDIA GB10", unified_memory=True, memory_source="meminfo",
        memory_total_bytes=meminfo.mem_total, memory_available_bytes=meminfo.mem_available,
    )
    result = memory_check(dataclasses.replace(report, devices=(spark,)))
    assert "unified memory: MemTotal" in result.summary
    if meminfo.mem_total < 110 * 1024**3:
        assert result.status == "fail"
        assert "gpt-oss-20b-eagle3" in result.fix


def test_privileges_fail_for_a_user_without_root_or_sudo_rules(world: Env) -> None:
    """As `nobody` (setpriv), a profile with host preparation fails `privileges`, read-only."""
    import pwd
    import tempfile

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("needs setpriv (util-linux)")
    shared = Path(tempfile.mkdtemp(prefix="llm-backend-doctor-", dir="/tmp"))
    try:
        for sub in ("state", "cwd", "config"):
            (shared / sub).mkdir()
        swap_file = shared / "swapfile"
        (shared / "cwd" / "llm-backend.toml").write_text(
            '[profiles.prep]\nextends = "smollm2-cpu"\n[profiles.prep.host_prep]\n'
            f'enabled = true\nswap_size = "64M"\nswap_file = "{swap_file}"\n'
        )
        for path in [shared, *shared.rglob("*")]:
            path.chmod(0o777 if path.is_dir() else 0o644)
        # The state dir must be nobody's own and writable by no one else.
        os.chown(shared / "state", pwd.getpwnam("nobody").pw_uid, -1)
        (shared / "state").chmod(0o700)
        env = {**world.env, "LLM_BACKEND_STATE_DIR": str(shared / "state"),
               "XDG_CONFIG_HOME": str(shared / "config"), "HOME": str(shared)}
        completed = subprocess.run(
            [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
             "-m", "llm_backend", "doctor", "--profile", "prep", "--json"],
            cwd=shared / "cwd", env=env, capture_output=True, text=True, timeout=180,
        )
        assert completed.returncode == 1 and completed.stdout, completed.stderr
        checks = checks_by_name(json.loads(completed.stdout))
        privileges = checks["privileges"]
        assert privileges["status"] == "fail"
        assert "root" in privileges["summary"] and "sudo" in privileges["summary"]
        assert privileges["fix"]
        assert checks["oom_daemons"]["status"] == "pass"
        assert checks["disk"]["status"] == "pass", checks["disk"]["summary"]  # 64M swap fits
        assert not swap_file.exists() and str(swap_file) not in Path("/proc/swaps").read_text()
    finally:
        shutil.rmtree(shared, ignore_errors=True)

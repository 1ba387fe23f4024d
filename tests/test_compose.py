"""docker-compose.yml and the Dockerfiles, checked without a Docker engine.

The compose file is validated against the Compose Specification's JSON schema
(a copy in tests/compose-spec.json, origin in tests/compose-spec.README), and
everything it points into the repository must exist: build contexts,
Dockerfiles, the files each Dockerfile copies, and the commands the containers
run (python modules, make targets).
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).resolve().parent / "compose-spec.json"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose-style ${VAR:-default} with an empty environment: the defaults."""
    return _VAR.sub(lambda m: m.group(2) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_matches_the_compose_spec(compose):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    # The schema does catch mistakes (a misspelt key), so the check above means something.
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["helthcheck"] = broken["services"]["api"].pop("healthcheck")
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_api_service(compose):
    api = compose["services"]["api"]
    binds = {v["target"]: v for v in api["volumes"]}
    assert binds["/models"]["read_only"] is True
    env = api["environment"]
    assert env["MODELS_DIR"] == "/models"
    # Every variable given to the service is a setting it reads (a typo would be ignored silently).
    known = {name.upper() for name in Settings.__dataclass_fields__}
    assert set(env) <= known, set(env) - known
    Settings.from_env({k: interpolate(str(v)) for k, v in env.items()})  # and every default parses
    health = api["healthcheck"]["test"]
    assert health[0] == "CMD" and "/health/ready" in " ".join(health)
    assert health[1:3] == ["python", "-c"]
    compile(health[3], "healthcheck", "exec")
    assert f":{env['PORT']}/health/ready" in health[3]
    assert interpolate(api["ports"][0]).endswith(f":{env['PORT']}")
    assert "/tmp" in api["tmpfs"] and api["read_only"] is True


def test_train_service(compose):
    train = compose["services"]["train"]
    assert train["profiles"] == ["train"]
    devices = train["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)
    assert train["shm_size"]
    binds = {v["target"]: v for v in train["volumes"]}
    dataset = train["environment"]["AUDIOSET_ROOT"]
    assert binds[dataset]["read_only"] is True  # the data set is mounted read-only
    assert not binds["/app/runs"].get("read_only", False)  # releases are written there
    assert train["command"] == ["make", "train-audioset"]
    assert (ROOT / interpolate(train["environment"]["CONFIG"])).is_file()  # the default recipe ships with the repo


def _dockerfile_instructions(path: Path):
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        lines.append((word.upper(), rest.strip()))
        current = ""
    return lines


def _command_words(args: str):
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def _check_command(words, context: Path, where: str):
    """A container command must run something the repository has."""
    if words[:2] == ["python", "-m"] or words[:2] == ["python3", "-m"]:
        module = words[2].replace(".", "/")
        assert (context / module / "__main__.py").is_file() or (context / f"{module}.py").is_file(), f"{where}: no module {words[2]}"
    elif words[0] == "make":
        makefile = (context / "Makefile").read_text()
        for target in (w for w in words[1:] if not w.startswith("-") and "=" not in w):
            assert re.search(rf"^{re.escape(target)}\s*:", makefile, re.M), f"{where}: the Makefile has no target {target!r}"
    elif words[0] in ("python", "python3"):
        assert (context / words[1]).is_file(), f"{where}: no script {words[1]}"
    else:
        pytest.fail(f"{where}: unexpected command {words}")


@pytest.mark.parametrize("service", ["api", "train"])
def test_builds_and_commands_exist_in_the_repo(compose, service):
    svc = compose["services"][service]
    context = (COMPOSE.parent / svc["build"]["context"]).resolve()
    assert context.is_dir()
    dockerfile = context / svc["build"]["dockerfile"]
    assert dockerfile.is_file(), dockerfile
    instructions = _dockerfile_instructions(dockerfile)
    assert instructions[0][0] in ("FROM", "ARG")
    workdir = None
    for word, args in instructions:
        if word == "WORKDIR":
            workdir = args
        if word in ("COPY", "ADD") and "--from" not in args:
            *sources, _dest = shlex.split(args)
            for src in sources:
                assert (context / src).exists(), f"{dockerfile.name}: COPY source {src} is not in the build context"
                assert not _ignored(context, src), f"{dockerfile.name}: COPY source {src} is excluded by .dockerignore"
        if word == "RUN" and args.startswith("make "):
            _check_command(shlex.split(args), context, f"{dockerfile.name} RUN")
    assert workdir == "/app"
    cmds = [args for word, args in instructions if word == "CMD"]
    assert cmds, f"{dockerfile.name} has no CMD"
    _check_command(_command_words(cmds[-1]), context, dockerfile.name)
    if "command" in svc:
        _check_command(svc["command"], context, f"docker-compose.yml services.{service}.command")


def _ignored(context: Path, src: str) -> bool:
    ignore = context / ".dockerignore"
    if not ignore.is_file():
        return False
    patterns = [p.strip() for p in ignore.read_text().splitlines() if p.strip() and not p.startswith("#")]
    first = Path(src).parts[0]
    return first in patterns


def test_dockerignore_keeps_the_context_small():
    patterns = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", "runs", "data"} <= patterns


def test_schema_copy_is_the_compose_spec():
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    service = schema["definitions"]["service"]["properties"]
    assert {"healthcheck", "deploy", "profiles", "shm_size", "build"} <= set(service)


def _make_plan(target: str, tmp_path: Path) -> str:
    """The commands `make <target>` would run on a fresh clone (no virtualenv yet), without running them."""
    import subprocess

    r = subprocess.run(["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("target", ["train-audioset", "serve", "paper-table", "venv"])
def test_run_targets_install_run_time_dependencies_only(target, tmp_path):
    plan = _make_plan(target, tmp_path)
    assert "-m venv" in plan and "pip install" in plan and "-e ." in plan  # a fresh clone gets its venv
    assert "[test]" not in plan and "torchaudio" not in plan, plan


def test_make_test_installs_the_test_extra_and_the_oracle(tmp_path):
    plan = _make_plan("test", tmp_path).splitlines()
    steps = [i for i, line in enumerate(plan) if "pip install" in line or "pytest" in line]
    assert any("-e ." in plan[i] and "[test]" not in plan[i] for i in steps)  # the run-time install first
    assert any("'.[test]'" in plan[i] for i in steps) and any("--no-deps torchaudio" in plan[i] for i in steps)
    assert "-m pytest" in plan[steps[-1]]  # and the tests only after everything is installed

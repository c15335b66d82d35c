"""Readers of the deployment files, shared by tests/unit/test_deploy_files.py (which checks the
files), tests/integration/test_deploy_commands.py and tests/e2e/ (which run their commands:
test_deploy_gunicorn.py, and test_multihost.py on emulated hosts).

docker-compose.yml is read with PyYAML (``yaml.safe_load``), the Dockerfile with
dockerfile-parse, and the commands of docs/deployment.md from its ```bash blocks with shlex.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY_DOC = ROOT / "docs" / "deployment.md"

Instruction = dict[str, Any]  # an item of DockerfileParser.structure


# --- Dockerfile -----------------------------------------------------------------------------


def dockerfile() -> DockerfileParser:
    """The project's Dockerfile, parsed (read-only use: the parser writes on assignment)."""
    return DockerfileParser(str(DOCKERFILE))


def instructions(parser: DockerfileParser, *keywords: str) -> list[Instruction]:
    """The instructions (comments dropped) whose keyword is in ``keywords`` (all when none)."""
    return [
        i
        for i in parser.structure
        if i["instruction"] != "COMMENT" and (not keywords or i["instruction"] in keywords)
    ]


def only(parser: DockerfileParser, keyword: str) -> Instruction:
    """The one instruction ``keyword`` of the Dockerfile."""
    found = instructions(parser, keyword)
    assert len(found) == 1, f"expected exactly one {keyword}, found {len(found)}"
    return found[0]


def exec_form(ins: Instruction) -> list[str] | None:
    """The JSON array of a ``CMD ["a", "b"]``-style instruction, else None."""
    try:
        value = json.loads(ins["value"])
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def dockerfile_entrypoint() -> tuple[list[str], list[str]]:
    """ENTRYPOINT and CMD of the Dockerfile, both exec form."""
    parser = dockerfile()
    entry = exec_form(only(parser, "ENTRYPOINT"))
    cmd = exec_form(only(parser, "CMD"))
    assert entry is not None and cmd is not None, "ENTRYPOINT and CMD must use the exec form"
    return entry, cmd


# --- docker-compose.yml ---------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    """docker-compose.yml as a dict."""
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


def services_by_role(compose: dict[str, Any]) -> dict[str, list[str]]:
    """Service names grouped by DMLC_ROLE ("state" for the State Server)."""
    roles: dict[str, list[str]] = {"state": [], "scheduler": [], "server": [], "worker": []}
    for name, svc in compose["services"].items():
        role = (svc.get("environment") or {}).get("DMLC_ROLE")
        roles["state" if role is None else role].append(name)
    return roles


def state_server_command() -> list[str]:
    """The State Server command of docker-compose.yml (entrypoint + command)."""
    svc = load_compose()["services"]["stateserver"]
    return [*svc["entrypoint"], *(svc.get("command") or [])]


# --- flags and the commands of the docs -----------------------------------------------------


def flag_value(argv: Sequence[str], flag: str) -> str:
    """The value after ``flag`` (which must occur exactly once)."""
    positions = [i for i, a in enumerate(argv) if a == flag]
    assert len(positions) == 1, f"{flag} must occur once in {list(argv)}"
    assert positions[0] + 1 < len(argv), f"{flag} has no value in {list(argv)}"
    return argv[positions[0] + 1]


def with_flags(argv: Sequence[str], values: dict[str, str]) -> list[str]:
    """``argv`` with the values of flags that it already has replaced (each must be there)."""
    out = list(argv)
    for flag, value in values.items():
        flag_value(out, flag)
        out[out.index(flag) + 1] = value
    return out


def doc_commands(text: str) -> list[list[str]]:
    """Commands of the ```bash / ```sh blocks of a Markdown text, continuations joined."""
    commands: list[list[str]] = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line, comments=True))
    return commands


def find_words(cmd: Sequence[str], words: Sequence[str]) -> int:
    """Where ``words`` start in ``cmd`` as consecutive arguments, -1 when they do not."""
    n = len(words)
    return next((i for i in range(len(cmd)) if list(cmd[i : i + n]) == list(words)), -1)


def doc_commands_with(words: Sequence[str]) -> list[list[str]]:
    """Commands of docs/deployment.md containing ``words``, leading ``VAR=value`` dropped."""
    found = []
    for cmd in doc_commands(DEPLOY_DOC.read_text()):
        if find_words(cmd, words) >= 0:
            while cmd and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", cmd[0]):
                cmd = cmd[1:]
            found.append(cmd)
    assert found, f"docs/deployment.md has no command containing {' '.join(words)!r}"
    return found


GUNICORN_APP = "StateServer.stateserver.wsgi:application"


def shell_commands(run_args: str) -> list[list[str]]:
    """The simple commands of a RUN line split at ``&&`` / ``;`` / ``||`` (tokens via shlex)."""
    commands: list[list[str]] = [[]]
    for token in shlex.split(run_args):
        if token in ("&&", ";", "||"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def gunicorn_command() -> list[str]:
    """The gunicorn command of docs/deployment.md."""
    found = doc_commands_with([GUNICORN_APP])
    assert len(found) == 1, found
    return found[0]

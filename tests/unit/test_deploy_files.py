"""Checks of the deployment files: Dockerfile, .dockerignore, docker-compose.yml, the docs.

No Docker engine is available to the tests, so they check what can be checked without one:
each file is parsed (tests/support/deploy_files.py: dockerfile-parse and PyYAML), every
command is validated against main.py's own parser, the DMLC variables are consistent across
services, and the commands shared with the docs and with tests/e2e/test_multihost.py are the
same strings. What needs a process (the libraries MXNet links against, the Dockerfile's
default command, the docs' gunicorn command) is tests/integration/test_deploy_commands.py's
and tests/e2e/test_deploy_gunicorn.py's.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections.abc import Sequence
from typing import Any

import pytest

from launcher.supervision import state_server_cmd
from tests.support.deploy_files import (
    DEPLOY_DOC,
    DOCKERIGNORE,
    ROOT,
    doc_commands,
    doc_commands_with,
    dockerfile,
    dockerfile_entrypoint,
    exec_form,
    find_words,
    flag_value,
    gunicorn_command,
    instructions,
    load_compose,
    only,
    services_by_role,
    shell_commands,
    state_server_command,
    with_flags,
)
from trainer.options import parse_args

DMLC_SHARED = (
    "DMLC_PS_ROOT_URI",
    "DMLC_PS_ROOT_PORT",
    "DMLC_NUM_SERVER",
    "DMLC_NUM_WORKER",
    "DMLC_INTERFACE",
    "DMLC_USE_KUBERNETES",
)
STATE_SERVER = ["python", "-m", "StateServer", "runserver"]


def dockerignore_patterns() -> list[str]:
    """The patterns of .dockerignore, comments and blank lines dropped."""
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def is_ignored(path: str, patterns: Sequence[str]) -> bool:
    """Whether ``path`` (relative, '/'-separated) is excluded by the patterns (last match wins;
    a pattern also excludes everything below a matching folder)."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.removeprefix("!").strip("/")
        options = [pat, pat[3:]] if pat.startswith("**/") else [pat]
        hit = any(
            fnmatch.fnmatchcase(prefix, opt)
            or (opt.startswith("**/") and fnmatch.fnmatchcase(prefix, "*/" + opt[3:]))
            for prefix in prefixes
            for opt in options
        )
        if hit:
            ignored = not negate
    return ignored


def check_main_flags(argv: Sequence[str]) -> Any:
    """Parse ``argv`` with main.py's parser (as main.py does); fail with its message."""
    try:
        return parse_args(list(argv))
    except SystemExit as exc:
        pytest.fail(f"main.py rejects {' '.join(argv)!r} (exit {exc.code})")


def test_dockerignore_matcher() -> None:
    pats = ["data", "**/__pycache__", "*.pyc", "logs", "!logs/README.md", ".venv"]
    assert is_ignored("data/x.gz", pats) and is_ignored("data", pats)
    assert is_ignored("trainer/__pycache__/a.pyc", pats) and is_ignored("__pycache__", pats)
    assert is_ignored(".venv/bin/python", pats) and is_ignored("logs/a", pats)
    assert not is_ignored("logs/README.md", pats)
    assert not is_ignored("main.py", pats) and not is_ignored("trainer/loop.py", pats)
    assert not is_ignored("database.py", pats)


def test_with_flags_and_doc_commands() -> None:
    argv = ["-m", "esync", "--rounds", "300"]
    assert with_flags(argv, {"--rounds": "5"}) == ["-m", "esync", "--rounds", "5"]
    with pytest.raises(AssertionError):
        with_flags(argv, {"-e": "5"})
    md = "x\n```bash\n# c\nA=1 python a.py \\\n   --b 'c d'\n```\n```python\nno\n```\n"
    assert doc_commands(md) == [["A=1", "python", "a.py", "--b", "c d"]]
    assert find_words(["a", "b", "c"], ["b", "c"]) == 1 and find_words(["a"], ["c"]) == -1


# --- Dockerfile ---------------------------------------------------------------------------


def test_dockerfile_base_image_and_workdir() -> None:
    parser = dockerfile()
    assert instructions(parser)[0]["instruction"] == "FROM", "a Dockerfile starts with FROM"
    assert not parser.is_multistage and parser.baseimage == "python:3.11-slim"
    assert only(parser, "WORKDIR")["value"] == "/app"
    assert parser.envs.get("OMP_NUM_THREADS") == "1"
    for ins in instructions(parser, "RUN", "COPY"):  # dockerfile-parse does not read heredocs
        assert "<<" not in ins["value"], f"line {ins['startline'] + 1}: no heredocs"


def test_dockerfile_installs_exactly_the_requirements() -> None:
    runs = instructions(dockerfile(), "RUN")
    pip_runs = [
        (ins, cmd)
        for ins in runs
        for cmd in shell_commands(ins["value"])
        if "pip" in cmd[0] or cmd[:3] == ["python", "-m", "pip"]
    ]
    assert len(pip_runs) == 1, f"one pip command expected, found {[c for _, c in pip_runs]}"
    pip_ins, pip_cmd = pip_runs[0]
    args = pip_cmd[pip_cmd.index("install") + 1 :] if "install" in pip_cmd else []
    assert args == ["-r", "requirements.txt"], (
        f"pip must install exactly -r requirements.txt, got {pip_cmd}"
    )
    copies = instructions(dockerfile(), "COPY")
    copy_req = next(i for i in copies if "requirements.txt" in i["value"])
    assert copy_req["startline"] < pip_ins["startline"], "copy requirements.txt before pip runs"


def test_dockerfile_copy_sources_exist_and_are_not_ignored() -> None:
    patterns = dockerignore_patterns()
    copies = instructions(dockerfile(), "COPY", "ADD")
    assert copies
    for ins in copies:
        line = ins["startline"] + 1
        assert ins["instruction"] == "COPY", f"line {line}: use COPY, not ADD"
        tokens = exec_form(ins) or shlex.split(ins["value"])
        sources = [t for t in tokens[:-1] if not t.startswith("--")]
        assert sources, f"line {line}: COPY without a source"
        for src in sources:
            assert (ROOT / src).exists(), f"line {line}: COPY source {src} does not exist"
            if src not in (".", "./"):
                assert not is_ignored(src, patterns), f"{src} is excluded by .dockerignore"
    for needed in (
        "main.py",
        "config.py",
        "utils.py",
        "trainer/loop.py",
        "models",
        "StateServer/__main__.py",
        "StateServer/stateserver/wsgi.py",
        "requirements.txt",
        "summary.py",
    ):
        assert (ROOT / needed).exists(), needed
        assert not is_ignored(needed, patterns), f".dockerignore excludes {needed}"


def test_dockerignore_excludes_local_state() -> None:
    patterns = dockerignore_patterns()
    for path in (
        "data/FashionMNIST/train-images-idx3-ubyte.gz",
        "logs/lenet/esync/x",
        ".venv/bin/python",
        ".git/HEAD",
        "trainer/__pycache__/loop.cpython-311.pyc",
        ".pytest_cache/v",
        ".ruff_cache/x",
    ):
        assert is_ignored(path, patterns), f".dockerignore does not exclude {path}"


def test_dockerfile_entrypoint_and_cmd_are_valid_main_py_flags() -> None:
    entry, cmd = dockerfile_entrypoint()
    assert entry[:2] == ["python", "main.py"] and (ROOT / entry[1]).is_file()
    assert flag_value(entry, "-dd") == "/app/data"
    args = check_main_flags(entry[2:] + cmd)
    assert (args.mode, args.network, args.dataset) == ("local", "lenet", "digits")
    assert args.data_dir == "/app/data"


# --- docker-compose.yml ---------------------------------------------------------------------


def test_compose_services_image_network_volume() -> None:
    compose = load_compose()
    services = compose["services"]
    roles = services_by_role(compose)
    assert roles["state"] == ["stateserver"]
    assert len(roles["scheduler"]) == 1 and len(roles["server"]) == 1
    assert len(roles["worker"]) == 3
    networks = list(compose["networks"])
    assert len(networks) == 1 and compose["networks"][networks[0]]["driver"] == "bridge"
    assert list(compose["volumes"]) == ["logs"]
    for name, svc in services.items():
        assert svc["image"] == "esync:latest" and svc["build"] == ".", name
        assert svc["networks"] == networks, f"{name} is not on the one network"
        for dep in svc.get("depends_on") or []:
            assert dep in services, f"{name} depends on unknown service {dep}"
    hostnames = [svc["hostname"] for svc in services.values()]
    assert len(set(hostnames)) == len(hostnames), "every container needs its own hostname"


def test_compose_dmlc_variables_are_consistent() -> None:
    compose = load_compose()
    services = compose["services"]
    roles = services_by_role(compose)
    nodes = roles["scheduler"] + roles["server"] + roles["worker"]
    envs = {name: services[name]["environment"] for name in nodes}
    for name, env in envs.items():
        for var in DMLC_SHARED:
            assert isinstance(env.get(var), str), f"{name}: {var} must be a quoted string"
            assert env[var] == envs[nodes[0]][var], f"{name}: {var} differs between services"
    env = envs[nodes[0]]
    assert int(env["DMLC_NUM_WORKER"]) == len(roles["worker"])
    assert int(env["DMLC_NUM_SERVER"]) == len(roles["server"]) == 1
    assert 1 <= int(env["DMLC_PS_ROOT_PORT"]) <= 65535
    scheduler = services[roles["scheduler"][0]]
    assert env["DMLC_PS_ROOT_URI"] in (roles["scheduler"][0], scheduler["hostname"])
    # ps-lite binds the scheduler to DMLC_PS_ROOT_URI unless DMLC_USE_KUBERNETES=1 (then to
    # 0.0.0.0); zmq cannot bind to a DNS name, so a service name needs the flag.
    assert env["DMLC_USE_KUBERNETES"] == "1"
    server = services[roles["server"][0]]
    assert roles["scheduler"][0] in (server.get("depends_on") or [])
    for name in roles["worker"]:
        deps = services[name].get("depends_on") or []
        assert set(deps) >= {"stateserver", *roles["scheduler"], *roles["server"]}, name


def test_compose_commands_are_valid_for_main_py() -> None:
    compose = load_compose()
    services = compose["services"]
    roles = services_by_role(compose)
    entry, _ = dockerfile_entrypoint()
    state_port = state_server_command()[4].rsplit(":", 1)[1]
    slowdowns = []
    for name in roles["scheduler"] + roles["server"] + roles["worker"]:
        svc = services[name]
        assert "entrypoint" not in svc, f"{name} must use the image's entrypoint"
        args = check_main_flags(entry[2:] + svc["command"])
        if name in roles["worker"]:
            env = svc["environment"]
            assert args.mode == "esync" and args.dataset == "digits"
            assert args.ip == "stateserver" and str(args.port) == state_port
            assert svc["volumes"] == [f"logs:{args.log_dir}"]
            assert env["ESYNC_TOKEN"] == services["stateserver"]["environment"]["ESYNC_TOKEN"]
            slowdowns.append(args.slowdown)
    assert len(set(slowdowns)) == len(slowdowns), f"workers need different slowdowns: {slowdowns}"
    commands = [services[n]["command"] for n in roles["worker"]]
    for cmd in commands:  # the workers differ only in --slowdown
        assert with_flags(cmd, {"--slowdown": "1"}) == with_flags(commands[0], {"--slowdown": "1"})


def test_compose_state_server_matches_the_docs() -> None:
    compose = load_compose()
    svc = compose["services"]["stateserver"]
    cmd = state_server_command()
    assert cmd[:4] == STATE_SERVER and (ROOT / "StateServer" / "__main__.py").is_file()
    host, port = cmd[4].rsplit(":", 1)
    assert cmd[1:] == state_server_cmd("runserver", host, int(port))[1:], "differs from launch"
    in_docs = doc_commands_with(cmd[1:4])
    assert cmd in in_docs, f"docs/deployment.md does not show {' '.join(cmd)!r}"
    for doc_cmd in in_docs:  # also inside `docker run ...` and `srun ... &` (Slurm)
        tail = doc_cmd[find_words(doc_cmd, cmd[1:4]) :]
        assert tail[: len(cmd) - 1] == cmd[1:] and tail[len(cmd) - 1 :] in ([], ["&"]), doc_cmd
    comments = [i["value"] for i in dockerfile().structure if i["instruction"] == "COMMENT"]
    header = " ".join(" ".join(comments).replace("\\", " ").split())
    assert " ".join(cmd[1:]) in header, "the Dockerfile's header shows another command"
    assert svc["command"] == [], "the entrypoint holds the whole State Server command"
    env = svc["environment"]
    allowed = env["ESYNC_ALLOWED_HOSTS"].split(",")
    assert "stateserver" in allowed, "workers reach the State Server by its service name"
    # compose refuses to start without a token: `${VAR:?message}` (docs/security.md)
    assert env["ESYNC_TOKEN"].startswith("${ESYNC_TOKEN:?"), env["ESYNC_TOKEN"]
    assert svc["ports"] == [f"127.0.0.1:{port}:{port}"]


# --- docs -----------------------------------------------------------------------------------


def test_docs_gunicorn_command_is_one_process_with_threads() -> None:
    cmd = gunicorn_command()
    assert cmd[:3] == ["python", "-m", "gunicorn"]
    assert flag_value(cmd, "--chdir") == "."
    assert flag_value(cmd, "--workers") == "1"
    assert flag_value(cmd, "--worker-class") == "gthread"
    assert int(flag_value(cmd, "--threads")) >= 2
    assert flag_value(cmd, "--bind") == state_server_command()[4]


def test_docs_cover_the_deployment_topics() -> None:
    text = DEPLOY_DOC.read_text()
    for needle in (
        "DMLC_ROLE=scheduler",
        "DMLC_ROLE=server",
        "DMLC_ROLE=worker",
        "DMLC_INTERFACE",
        "DMLC_PS_ROOT_URI",
        "DMLC_PS_ROOT_PORT",
        "PS_VERBOSE",
        "ip -br addr",
        "chrony",
        "rsync",
        "summary.py",
        "ESYNC_TOKEN",
        "ESYNC_ALLOWED_HOSTS",
        "mxnet-cu112==1.9.1",
        "--slowdown",
        "-g 0",
        "docker compose",
        "docker build",
        "firewall",
    ):
        assert needle in text, f"docs/deployment.md does not mention {needle!r}"
    assert not re.search(
        r"\b(?:\d{1,3}\.){3}\d{1,3}\b", re.sub(r"\b(127\.0\.0\.1|0\.0\.0\.0)\b", "", text)
    ), "use placeholders such as <scheduler-ip>, not addresses, in the docs"
    entry, _ = dockerfile_entrypoint()
    checked = 0
    for cmd in doc_commands(text):  # every main.py command of the docs parses
        if "main.py" in cmd:
            argv = cmd[cmd.index("main.py") + 1 :]
        elif cmd[:2] == ["docker", "run"] and "esync:latest" in cmd and "--entrypoint" not in cmd:
            argv = entry[2:] + cmd[cmd.index("esync:latest") + 1 :]
        else:
            continue
        argv = argv[:-1] if argv[-1:] == ["&"] else argv  # run in the background (Slurm)
        check_main_flags(["placeholder" if re.fullmatch(r"<[^>]+>", a) else a for a in argv])
        checked += 1
    assert checked >= 6

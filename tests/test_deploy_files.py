"""Checks of the deployment files: Dockerfile, .dockerignore, docker-compose.yml, the docs.

No Docker engine is available to the tests, so they check what can be checked without one:
each file is parsed (a small Dockerfile parser and a reader for the plain YAML subset that
docker-compose.yml is written in, both defined and tested here; PyYAML is not a dependency),
every command is validated against main.py's own parser, the DMLC variables are consistent
across services, the system libraries that MXNet's wheel links against are exactly those the
Dockerfile installs on top of the slim image, and the commands shared with the docs and with
tests/test_multihost.py are the same strings. The Dockerfile's default command and the docs'
gunicorn command are also run for real (marked slow).

``load_compose()``, ``services_by_role()``, ``state_server_command()``,
``dockerfile_entrypoint()``, ``flag_value()`` and ``with_flags()`` are also used by
tests/test_multihost.py, which runs the compose file's commands on emulated hosts.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trainer.options import parse_args

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY_DOC = ROOT / "docs" / "deployment.md"
PYTHON = sys.executable

# Debian packages of python:3.11-slim (bookworm) that provide libraries MXNet links against.
SLIM_IMAGE_PACKAGES = frozenset({"libc6", "libgcc-s1", "libstdc++6", "zlib1g"})
DMLC_SHARED = (
    "DMLC_PS_ROOT_URI",
    "DMLC_PS_ROOT_PORT",
    "DMLC_NUM_SERVER",
    "DMLC_NUM_WORKER",
    "DMLC_INTERFACE",
    "DMLC_USE_KUBERNETES",
)


# --- a Dockerfile parser ------------------------------------------------------------------


class DockerfileError(ValueError):
    """The Dockerfile uses syntax this parser does not accept."""


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: keyword, raw arguments, exec-form list when it is one."""

    keyword: str
    args: str
    line: int

    @property
    def exec_form(self) -> list[str] | None:
        """The JSON array of ``CMD ["a", "b"]``-style arguments, else None."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, ``\\`` continuations joined."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        full = " ".join(p for p in pending if p)
        pending = []
        keyword, _, args = full.partition(" ")
        if not re.fullmatch(r"[A-Za-z]+", keyword):
            raise DockerfileError(f"line {start}: not an instruction: {full!r}")
        if "<<" in args and keyword.upper() in ("RUN", "COPY"):
            raise DockerfileError(f"line {start}: heredocs are not supported")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    if pending:
        raise DockerfileError("the last instruction ends with a line continuation")
    return out


def shell_commands(run_args: str) -> list[list[str]]:
    """The simple commands of a RUN line split at ``&&`` / ``;`` (tokens via shlex)."""
    commands: list[list[str]] = [[]]
    for token in shlex.split(run_args, posix=True):
        if token in ("&&", ";", "||"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def env_values(instructions: Sequence[Instruction]) -> dict[str, str]:
    """Variables set by ENV (``KEY=value`` forms)."""
    values: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for token in shlex.split(ins.args):
                key, sep, value = token.partition("=")
                if not sep:
                    raise DockerfileError(f"line {ins.line}: use ENV KEY=value")
                values[key] = value
    return values


def _one(instructions: Sequence[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected exactly one {keyword}, found {len(found)}"
    return found[0]


def dockerfile_entrypoint() -> tuple[list[str], list[str]]:
    """ENTRYPOINT and CMD of the Dockerfile, both exec form."""
    instructions = parse_dockerfile(DOCKERFILE.read_text())
    entry = _one(instructions, "ENTRYPOINT").exec_form
    cmd = _one(instructions, "CMD").exec_form
    assert entry is not None and cmd is not None, "ENTRYPOINT and CMD must use the exec form"
    return entry, cmd


# --- a .dockerignore matcher -------------------------------------------------------------


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
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        options = [pat]
        if pat.startswith("**/"):
            options.append(pat[3:])
        hit = any(
            fnmatch.fnmatchcase(prefix, opt)
            or (opt.startswith("**/") and fnmatch.fnmatchcase(prefix, "*/" + opt[3:]))
            for prefix in prefixes
            for opt in options
        )
        if hit:
            ignored = not negate
    return ignored


# --- a reader for the plain YAML subset of docker-compose.yml -------------------------------


class YamlSubsetError(ValueError):
    """Input outside the supported subset of YAML, or malformed."""


@dataclass(frozen=True)
class _Line:
    number: int
    indent: int
    text: str


def _strip_comment(text: str) -> str:
    """``text`` without a trailing comment ('#' at the start or after a blank, not quoted)."""
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
            elif ch == "\\" and quote == '"':
                continue
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
    return text.rstrip()


def _scalar(text: str, number: int) -> Any:
    """A plain, single- or double-quoted scalar, or a flow list / empty flow mapping."""
    text = text.strip()
    if text.startswith("["):
        if not text.endswith("]"):
            raise YamlSubsetError(f"line {number}: unterminated flow list")
        inner = text[1:-1].strip()
        return [_scalar(item, number) for item in _split_flow(inner, number)] if inner else []
    if text == "{}":
        return {}
    if text[:1] in ("{", "&", "*", "!", "|", ">", "?", "%", "@", "`"):
        raise YamlSubsetError(f"line {number}: unsupported YAML syntax: {text!r}")
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"'):
            raise YamlSubsetError(f"line {number}: unterminated double-quoted string")
        try:
            return json.loads(text)
        except ValueError as exc:
            raise YamlSubsetError(f"line {number}: bad double-quoted string: {exc}") from None
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'"):
            raise YamlSubsetError(f"line {number}: unterminated single-quoted string")
        body = text[1:-1]
        if re.search(r"(?<!')'(?!')", body.replace("''", "")):
            raise YamlSubsetError(f"line {number}: stray quote in {text!r}")
        return body.replace("''", "'")
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if re.fullmatch(r"[-+]?[0-9]+", text):
        return int(text)
    if re.fullmatch(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", text):
        return float(text)
    if ": " in text or text.endswith(":"):
        raise YamlSubsetError(f"line {number}: unexpected mapping in a scalar: {text!r}")
    return text


def _split_flow(inner: str, number: int) -> list[str]:
    items, current, quote = [], "", ""
    for ch in inner:
        if quote:
            current += ch
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
            current += ch
        elif ch in "[]{}":
            raise YamlSubsetError(f"line {number}: nested flow collections are not supported")
        elif ch == ",":
            items.append(current)
            current = ""
        else:
            current += ch
    if quote:
        raise YamlSubsetError(f"line {number}: unterminated quote in a flow list")
    items.append(current)
    if any(not item.strip() for item in items):
        raise YamlSubsetError(f"line {number}: empty item in a flow list")
    return items


def _split_key(text: str, number: int) -> tuple[str, str] | None:
    """``key: value`` -> (key, value text); None when the line is not a mapping entry."""
    if text[:1] in "\"'":
        end = text.find(text[0], 1)
        if end < 0:
            raise YamlSubsetError(f"line {number}: unterminated quoted key")
        rest = text[end + 1 :]
        if not (rest == ":" or rest.startswith(": ")):
            return None
        return _scalar(text[: end + 1], number), rest[1:].strip()
    match = re.match(r"([^\s:#][^:#]*?)\s*:(?:\s+(.*))?$", text)
    if not match:
        return None
    return match.group(1), (match.group(2) or "").strip()


def read_yaml_subset(text: str) -> Any:
    """Parse block mappings, ``- item`` lists, flow lists and scalars (see module doc)."""
    lines: list[_Line] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YamlSubsetError(f"line {number}: tabs in indentation")
        body = _strip_comment(raw)
        if not body.strip():
            continue
        if body.strip() in ("---", "..."):
            raise YamlSubsetError(f"line {number}: multi-document streams are not supported")
        lines.append(_Line(number, len(body) - len(body.lstrip(" ")), body.strip()))
    if not lines:
        return None
    value, end = _block(lines, 0, lines[0].indent)
    if end != len(lines):
        bad = lines[end]
        raise YamlSubsetError(f"line {bad.number}: unexpected indentation")
    return value


def _is_item(line: _Line) -> bool:
    return line.text == "-" or line.text.startswith("- ")


def _block(lines: list[_Line], i: int, indent: int) -> tuple[Any, int]:
    if _is_item(lines[i]):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _nested(
    lines: list[_Line], i: int, indent: int, allow_same_indent_list: bool
) -> tuple[Any, int]:
    """The block value of an entry whose value text is empty (or None when there is none)."""
    if i < len(lines) and lines[i].indent > indent:
        return _block(lines, i, lines[i].indent)
    if (
        allow_same_indent_list
        and i < len(lines)
        and lines[i].indent == indent
        and _is_item(lines[i])
    ):
        return _sequence(lines, i, indent)
    return None, i


def _mapping(lines: list[_Line], i: int, indent: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    while i < len(lines) and lines[i].indent == indent and not _is_item(lines[i]):
        line = lines[i]
        entry = _split_key(line.text, line.number)
        if entry is None:
            raise YamlSubsetError(f"line {line.number}: expected 'key: value', got {line.text!r}")
        key, value_text = entry
        if key in out:
            raise YamlSubsetError(f"line {line.number}: duplicate key {key!r}")
        if value_text:
            out[key], i = _scalar(value_text, line.number), i + 1
        else:
            out[key], i = _nested(lines, i + 1, indent, allow_same_indent_list=True)
    if i < len(lines) and lines[i].indent > indent:
        raise YamlSubsetError(f"line {lines[i].number}: unexpected indentation")
    return out, i


def _sequence(lines: list[_Line], i: int, indent: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    while i < len(lines) and lines[i].indent == indent and _is_item(lines[i]):
        line = lines[i]
        item = line.text[1:].strip()
        if not item:
            value, i = _nested(lines, i + 1, indent, allow_same_indent_list=False)
            out.append(value)
            continue
        if _split_key(item, line.number) is not None and not item.startswith(("'", '"', "[")):
            raise YamlSubsetError(
                f"line {line.number}: mappings inside '- ' items are not supported"
            )
        out.append(_scalar(item, line.number))
        i += 1
    if i < len(lines) and lines[i].indent > indent:
        raise YamlSubsetError(f"line {lines[i].number}: unexpected indentation")
    return out, i


def load_compose() -> dict[str, Any]:
    """docker-compose.yml as a dict."""
    data = read_yaml_subset(COMPOSE.read_text())
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


def services_by_role(compose: dict[str, Any]) -> dict[str, list[str]]:
    """Service names grouped by DMLC_ROLE ("state" for the State Server)."""
    roles: dict[str, list[str]] = {"state": [], "scheduler": [], "server": [], "worker": []}
    for name, svc in compose["services"].items():
        role = (svc.get("environment") or {}).get("DMLC_ROLE")
        roles["state" if role is None else role].append(name)
    return roles


# --- flags and commands shared with the docs and the multi-host test ------------------------


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


def _strip_env(cmd: list[str]) -> list[str]:
    """``cmd`` without leading ``VAR=value`` assignments."""
    i = 0
    while i < len(cmd) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", cmd[i]):
        i += 1
    return cmd[i:]


def doc_commands_with(words: Sequence[str]) -> list[list[str]]:
    """Commands of docs/deployment.md (env assignments stripped) containing ``words``."""
    n = len(words)
    found = [
        _strip_env(c)
        for c in doc_commands(DEPLOY_DOC.read_text())
        if any(c[i : i + n] == list(words) for i in range(len(c)))
    ]
    assert found, f"docs/deployment.md has no command containing {' '.join(words)!r}"
    return found


def state_server_command() -> list[str]:
    """The State Server command of docker-compose.yml (entrypoint + command)."""
    svc = load_compose()["services"]["stateserver"]
    return [*svc["entrypoint"], *(svc.get("command") or [])]


def check_main_flags(argv: Sequence[str]) -> Any:
    """Parse ``argv`` with main.py's parser (as main.py does); fail with its message."""
    try:
        return parse_args(list(argv))
    except SystemExit as exc:
        pytest.fail(f"main.py rejects {' '.join(argv)!r} (exit {exc.code})")


# --- tests of the helpers -------------------------------------------------------------------


def test_yaml_subset_reader_accepts_the_subset() -> None:
    text = """# comment
name: demo   # trailing comment
top:
  list:
    - a
    - "b # not a comment"
    - 'it''s'
  same_indent:
  - x
  flow: ["-m", 'esync', 3, "a,b"]
  empty_flow: []
  nested:
    key: "value: with colon"
    num: 9091
    neg: -2
    fl: 1.5
    yes: true
    nothing:
  url: http://host:80/path
"""
    assert read_yaml_subset(text) == {
        "name": "demo",
        "top": {
            "list": ["a", "b # not a comment", "it's"],
            "same_indent": ["x"],
            "flow": ["-m", "esync", 3, "a,b"],
            "empty_flow": [],
            "nested": {
                "key": "value: with colon",
                "num": 9091,
                "neg": -2,
                "fl": 1.5,
                "yes": True,
                "nothing": None,
            },
            "url": "http://host:80/path",
        },
    }
    assert read_yaml_subset("") is None
    assert read_yaml_subset("a: {}\n") == {"a": {}}


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: &anchor 1\n", "unsupported"),
        ("a: *anchor\n", "unsupported"),
        ("a: |\n  text\n", "unsupported"),
        ("a: 1\na: 2\n", "duplicate key"),
        ("a:\n  b: 1\n    c: 2\n", "indentation"),
        ("a:\n\tb: 1\n", "tabs"),
        ("a: [1, [2]]\n", "nested flow"),
        ("a: [1, 2\n", "unterminated"),
        ('a: "open\n', "unterminated"),
        ("- a: 1\n", "mappings inside"),
        ("a: 1\n---\nb: 2\n", "multi-document"),
        ("just text\n", "expected 'key: value'"),
        ("a: {b: 1}\n", "unsupported"),
    ],
)
def test_yaml_subset_reader_rejects_the_rest(text: str, message: str) -> None:
    with pytest.raises(YamlSubsetError, match=message):
        read_yaml_subset(text)


def test_dockerfile_parser() -> None:
    text = """# syntax comment
FROM base:1 AS build
RUN a \\
    # inner comment
    && b
CMD ["x", "y"]
ENV A=1 \\
    B="two words"
"""
    ins = parse_dockerfile(text)
    assert [(i.keyword, i.line) for i in ins] == [("FROM", 2), ("RUN", 3), ("CMD", 6), ("ENV", 7)]
    assert ins[1].args == "a && b"
    assert shell_commands(ins[1].args) == [["a"], ["b"]]
    assert ins[2].exec_form == ["x", "y"] and ins[1].exec_form is None
    assert env_values(ins) == {"A": "1", "B": "two words"}
    with pytest.raises(DockerfileError):
        parse_dockerfile("RUN a \\\n")
    with pytest.raises(DockerfileError):
        parse_dockerfile("RUN <<EOF\nx\nEOF\n")


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


# --- Dockerfile ---------------------------------------------------------------------------


def test_dockerfile_base_image_and_workdir() -> None:
    ins = parse_dockerfile(DOCKERFILE.read_text())
    assert ins[0].keyword == "FROM", "a Dockerfile starts with FROM"
    assert _one(ins, "FROM").args == "python:3.11-slim"
    assert _one(ins, "WORKDIR").args == "/app"
    assert env_values(ins).get("OMP_NUM_THREADS") == "1"


def test_dockerfile_installs_exactly_the_requirements() -> None:
    ins = parse_dockerfile(DOCKERFILE.read_text())
    pip_runs = [
        cmd
        for i in ins
        if i.keyword == "RUN"
        for cmd in shell_commands(i.args)
        if "pip" in cmd[0] or cmd[:3] == ["python", "-m", "pip"]
    ]
    assert len(pip_runs) == 1, f"one pip command expected, found {pip_runs}"
    args = pip_runs[0][pip_runs[0].index("install") + 1 :] if "install" in pip_runs[0] else []
    assert args == ["-r", "requirements.txt"], (
        f"pip must install exactly -r requirements.txt, got {pip_runs[0]}"
    )
    copy_req = next(i for i in ins if i.keyword == "COPY" and "requirements.txt" in i.args)
    pip_line = next(i.line for i in ins if i.keyword == "RUN" and "pip" in i.args)
    assert copy_req.line < pip_line, "requirements.txt must be copied before pip runs"


def _apt_packages(ins: Sequence[Instruction]) -> list[str]:
    pkgs: list[str] = []
    for i in ins:
        if i.keyword != "RUN":
            continue
        for cmd in shell_commands(i.args):
            if cmd[:1] in (["apt-get"], ["apt"]) and "install" in cmd:
                pkgs += [t for t in cmd[cmd.index("install") + 1 :] if not t.startswith("-")]
    return pkgs


def _mxnet_system_packages() -> set[str]:
    """Debian packages providing the libraries libmxnet.so loads from outside the wheel."""
    import mxnet

    lib = Path(mxnet.__file__).parent / "libmxnet.so"
    out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, check=True).stdout
    site = str(Path(mxnet.__file__).parents[1])
    packages: set[str] = set()
    for line in out.splitlines():
        match = re.match(r"\s*(\S+) => (\S+)", line)
        if not match or match.group(2).startswith(site):
            continue
        assert match.group(2) != "not", f"libmxnet.so: {match.group(1)} not found"
        path = os.path.realpath(match.group(2))
        candidates = [path, match.group(2)]
        candidates += [
            p.replace("/usr/lib/", "/lib/", 1) for p in candidates if p.startswith("/usr/lib/")
        ]
        candidates += ["/usr" + p for p in candidates if p.startswith("/lib/")]
        for cand in candidates:
            res = subprocess.run(["dpkg", "-S", cand], capture_output=True, text=True)
            if res.returncode == 0:
                packages.add(res.stdout.split(":")[0])
                break
        else:
            pytest.fail(f"no Debian package owns {match.group(2)}")
    return packages


@pytest.mark.skipif(
    shutil.which("ldd") is None or shutil.which("dpkg") is None,
    reason="needs ldd and dpkg (a Debian-based system) to map libraries",
)
def test_dockerfile_apt_packages_are_what_mxnet_needs_beyond_the_slim_image() -> None:
    ins = parse_dockerfile(DOCKERFILE.read_text())
    needed = _mxnet_system_packages() - SLIM_IMAGE_PACKAGES
    installed = _apt_packages(ins)
    assert len(installed) == len(set(installed))
    assert set(installed) == needed, (
        f"apt-get installs {sorted(installed)}; libmxnet.so needs {sorted(needed)} beyond "
        f"python:3.11-slim's {sorted(SLIM_IMAGE_PACKAGES)}"
    )


def test_dockerfile_copy_sources_exist_and_are_not_ignored() -> None:
    ins = parse_dockerfile(DOCKERFILE.read_text())
    patterns = dockerignore_patterns()
    copies = [i for i in ins if i.keyword in ("COPY", "ADD")]
    assert copies
    for i in copies:
        assert i.keyword == "COPY", "use COPY, not ADD"
        tokens = i.exec_form or shlex.split(i.args)
        sources = [t for t in tokens[:-1] if not t.startswith("--")]
        assert sources, f"line {i.line}: COPY without a source"
        for src in sources:
            assert (ROOT / src).exists(), f"line {i.line}: COPY source {src} does not exist"
            if src not in (".", "./"):
                assert not is_ignored(src, patterns), f"{src} is excluded by .dockerignore"
    for needed in (
        "main.py",
        "config.py",
        "utils.py",
        "trainer/loop.py",
        "models",
        "StateServer/manage.py",
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


@pytest.mark.slow
def test_dockerfile_default_command_runs(tmp_path: Path) -> None:
    """The image's default command, with the data and log folders moved into tmp_path."""
    entry, cmd = dockerfile_entrypoint()
    argv = [
        PYTHON,
        *with_flags(entry[1:], {"-dd": str(tmp_path / "data")}),
        *cmd,
        "-ld",
        str(tmp_path / "logs"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMLC_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rounds = list((tmp_path / "logs" / "lenet" / "local").glob("*/*-rank0/rounds.jsonl"))
    assert len(rounds) == 1
    records = [json.loads(line) for line in rounds[0].read_text().splitlines()]
    assert records[-1]["round"] == int(flag_value(cmd, "--rounds"))
    assert "test_acc" in records[-1]


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
    state_port = state_server_command()[3].rsplit(":", 1)[1]
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
    assert cmd[:3] == ["python", "StateServer/manage.py", "runserver"]
    assert (ROOT / cmd[1]).is_file()
    in_docs = doc_commands_with(cmd[1:3])
    assert cmd in in_docs, f"docs/deployment.md does not show {' '.join(cmd)!r}"
    for doc_cmd in in_docs:  # also inside `docker run ... --entrypoint python`
        assert doc_cmd[doc_cmd.index(cmd[1]) :] == cmd[1:], doc_cmd
    assert svc["command"] == [], "the entrypoint holds the whole State Server command"
    env = svc["environment"]
    allowed = env["ESYNC_ALLOWED_HOSTS"].split(",")
    assert "stateserver" in allowed, "workers reach the State Server by its service name"
    assert env["ESYNC_TOKEN"] == "${ESYNC_TOKEN:-}"
    assert svc["ports"] == [f"127.0.0.1:{cmd[3].rsplit(':', 1)[1]}:{cmd[3].rsplit(':', 1)[1]}"]


# --- docs -----------------------------------------------------------------------------------


def gunicorn_command() -> list[str]:
    """The gunicorn command of docs/deployment.md."""
    found = doc_commands_with(["stateserver.wsgi:application"])
    assert len(found) == 1, found
    return found[0]


def test_docs_gunicorn_command_is_one_process_with_threads() -> None:
    cmd = gunicorn_command()
    assert cmd[:3] == ["python", "-m", "gunicorn"]
    assert flag_value(cmd, "--chdir") == "StateServer"
    assert flag_value(cmd, "--workers") == "1"
    assert flag_value(cmd, "--worker-class") == "gthread"
    assert int(flag_value(cmd, "--threads")) >= 2
    assert flag_value(cmd, "--bind") == state_server_command()[3]


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
        check_main_flags(["placeholder" if re.fullmatch(r"<[^>]+>", a) else a for a in argv])
        checked += 1
    assert checked >= 6


@functools.cache
def _netns_available() -> tuple[bool, str]:
    from tests.netns import available

    return available()


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.skipif(
    not _netns_available()[0],
    reason="runs the docs' gunicorn command in a private network namespace "
    f"so that its fixed port cannot clash: {_netns_available()[1]}",
)
def test_docs_gunicorn_command_serves() -> None:
    """The docs' gunicorn command, verbatim, in a namespace with only ``lo``."""
    from tests.netns import Network, Processes

    cmd = gunicorn_command()
    port = int(flag_value(cmd, "--bind").rsplit(":", 1)[1])
    with tempfile.TemporaryDirectory() as tmp:
        procs = Processes(tmp)
        try:
            with Network(["gunicorn"]) as net:
                host = net.hosts["gunicorn"]
                env = {k: v for k, v in os.environ.items() if not k.startswith("DMLC_")}
                proc = procs.start("gunicorn", host.wrap([PYTHON, *cmd[1:]]), env, str(ROOT))
                probe = (
                    "import json, sys, time, urllib.request\n"
                    "end = time.time() + 60\n"
                    "while True:\n"
                    "    try:\n"
                    f"        r = urllib.request.urlopen('http://127.0.0.1:{port}"
                    "/status.json', timeout=2)\n"
                    "        print(json.dumps(json.load(r))); break\n"
                    "    except OSError:\n"
                    "        if time.time() > end: sys.exit(1)\n"
                    "        time.sleep(0.2)\n"
                )
                res = subprocess.run(
                    host.wrap([PYTHON, "-c", probe]), capture_output=True, text=True, timeout=90
                )
                assert res.returncode == 0, proc.tail()
                assert isinstance(json.loads(res.stdout), dict)
                assert proc.popen.poll() is None
        finally:
            procs.stop_all()
        assert "gthread" in proc.tail(50), proc.tail(50)
        assert not procs.leftovers()

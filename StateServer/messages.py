"""Wire messages of the State Server: typed dataclasses plus strict parsing.

Every message is a JSON object with a ``msg_type``:

* ``reset`` (alias ``init``) with ``num_workers`` and ``epsilon``: (re)initialise the server;
  with ``"rejoin": true`` a worker re-registers after a State Server restart: initialise
  unless already initialised with the same parameters, and never forget a record;
* ``reset`` with ``rank``, ``t``, ``te``: worker ``rank`` starts round ``t`` at time ``te``;
* ``report`` with ``rank``, ``k``, ``c``, ``te``: progress of a worker, no answer wanted;
* ``query`` with the same fields as ``report``: progress plus "what do I do next?";
* ``hold`` with ``rank``, ``t``, ``k``, ``c``, ``te``: progress of a non-blocking worker in
  round ``t``; the server answers (a ``response``) when the worker must synchronise: the
  delayed ACK (see docs/state-server.md, "Non-blocking protocol");
* ``response`` (server to worker only): ``rank``, ``round``, ``action`` (compute | sync),
  optionally ``left`` (seconds until the slowest worker is expected to finish), and for an
  answer to a ``hold`` ``held`` (seconds the server kept it open), ``late`` (seconds
  between the moment the answer was due and the moment it was sent) and ``final`` (true:
  the asker is the slowest; send one more hold when you reach the barrier);
* ``ack`` (server to worker only): ``of`` (init | reset | report), ``round``, and ``rank``
  unless it acknowledges an init.

Both sides use this module: the server parses with :func:`parse_message` / :func:`parse_fields`
and answers with :class:`ResponseMsg` / :class:`AckMsg`; the client
(``trainer/state_client.py``) builds the worker messages, serialises them with
:func:`message_to_dict` and parses the answers with :func:`parse_response` / :func:`parse_ack`.

Parsing never trusts its input: wrong types, NaN/inf, negative or absurd numbers, unknown or
missing fields all raise :class:`MessageError` with a message naming the offending field.
This module does not import Django.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

MAX_BODY_BYTES = 64 * 1024  # larger request bodies are refused (HTTP 413; see httpapi.py)
MAX_NUM_WORKERS = 10_000
MAX_INT = 2**53  # JSON-safe integer bound for rounds and iteration counters
MAX_SECONDS = 1e6  # capability c and epsilon: more than 11 days per batch is absurd
MAX_UNIX_TIME = 1e11  # te: year ~5000
ACTIONS = ("compute", "sync")
ACKED = ("init", "reset", "report")  # the messages the server acknowledges


class MessageError(ValueError):
    """A message is malformed; the text says precisely what is wrong, and ``status`` is the
    HTTP status to answer (400; 413 for a body too large)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class InitMsg:
    """(Re)initialise the server for a run of ``num_workers`` workers.

    ``rejoin`` False (a plain init): start a new run, forget every record. True: a worker
    re-registers after a State Server restart; initialise only if not initialised yet, and
    refuse (HTTP 400) if initialised with other parameters. On the wire ``rejoin`` is only
    sent when true, so a plain init is the upstream message unchanged.
    """

    num_workers: int
    epsilon: float
    rejoin: bool = False
    msg_type: str = "reset"


@dataclass(frozen=True, slots=True)
class ResetMsg:
    """Worker ``rank`` starts round ``t``; ``te`` is the Unix time it started it."""

    rank: int
    t: int
    te: float
    msg_type: str = "reset"


@dataclass(frozen=True, slots=True)
class _WorkerState:
    """The fields of a report and a query: worker ``rank`` has done ``k`` local iterations at
    ``c`` s/batch, the last one ending at Unix time ``te``. (Its subclasses are told apart by
    their exact type, never by ``isinstance`` of this base.)"""

    rank: int
    k: int
    c: float
    te: float


@dataclass(frozen=True, slots=True)
class ReportMsg(_WorkerState):
    """A worker's state (:class:`_WorkerState`); no answer wanted but an ack."""

    msg_type: str = "report"


@dataclass(frozen=True, slots=True)
class QueryMsg(_WorkerState):
    """A worker's state (:class:`_WorkerState`); the worker asks for its next action."""

    msg_type: str = "query"


@dataclass(frozen=True, slots=True)
class HoldMsg:
    """Progress of worker ``rank`` in round ``t`` (as :class:`ReportMsg`), and "answer me when
    I must synchronise". The server holds the request open until Alg. 2 says sync (or at most
    ``HOLD_MAX_S``, then answers compute: send it again). With ``k == 0`` it is also the
    worker's reset into round ``t`` at ``te``."""

    rank: int
    t: int
    k: int
    c: float
    te: float
    msg_type: str = "hold"


@dataclass(frozen=True, slots=True)
class ResponseMsg:
    """The server's answer to a query or a hold.

    Optional (absent from the JSON when None / false): ``left``, the seconds until the
    slowest worker is expected to finish its batch (on a sync while it still computes: the
    budget of a smaller last batch); on answers to a hold: ``held`` and ``late``, how long the
    server kept it open and how long after the answer was due it was sent, and ``final``:
    the asker is the slowest worker, so the server wants to know when it reaches the barrier
    (one more hold then; the others are told sync when it does).
    """

    rank: int
    round: int
    action: str
    left: float | None = None
    held: float | None = None
    late: float | None = None
    final: bool = False
    msg_type: str = "response"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, ``msg_type`` first; the optional fields only when set."""
        out: dict[str, Any] = {
            "msg_type": self.msg_type,
            "rank": self.rank,
            "round": self.round,
            "action": self.action,
        }
        for name in _OPTIONAL_RESPONSE:
            value = getattr(self, name)
            if value is not None:
                out[name] = round(value, 6)
        if self.final:
            out["final"] = True
        return out


_OPTIONAL_RESPONSE = ("left", "held", "late")


@dataclass(frozen=True, slots=True)
class AckMsg:
    """The server's answer to init, reset and report messages."""

    of: str
    round: int
    rank: int | None = None
    msg_type: str = "ack"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, ``msg_type`` first; ``rank`` only when there is one."""
        out: dict[str, Any] = {"msg_type": self.msg_type, "of": self.of, "round": self.round}
        if self.rank is not None:
            out["rank"] = self.rank
        return out


WorkerMsg = InitMsg | ResetMsg | ReportMsg | QueryMsg | HoldMsg


# --- field checks ---------------------------------------------------------------------

_INT_RE = re.compile(r"[+-]?\d{1,20}")


def _as_bool(name: str, value: object, lenient: bool) -> bool:
    """Check that ``value`` is a JSON boolean; ``lenient`` (form fields) also takes
    ``true``/``false``/``1``/``0`` as strings, and the integers 0 and 1."""
    if lenient:
        if isinstance(value, str):
            value = {"true": True, "1": True, "false": False, "0": False}.get(
                value.strip().lower(), value
            )
        elif type(value) is int and value in (0, 1):
            value = bool(value)
    if not isinstance(value, bool):
        raise MessageError(f"field '{name}' must be true or false, got {_show(value)}")
    return value


def _as_int(name: str, value: object, lo: int, hi: int, lenient: bool) -> int:
    """Check that ``value`` is an integer in [lo, hi]; ``lenient`` also takes digit strings."""
    if lenient and isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError(f"field '{name}' must be an integer, got {_show(value)}")
    if not lo <= value <= hi:
        raise MessageError(f"field '{name}' must be in [{lo}, {hi}], got {value}")
    return value


def _as_float(name: str, value: object, hi: float, lenient: bool) -> float:
    """Check that ``value`` is a finite number in [0, hi]; ``lenient`` also takes strings."""
    if lenient and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise MessageError(f"field '{name}' must be a number, got {_show(value)}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MessageError(f"field '{name}' must be a number, got {_show(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise MessageError(f"field '{name}' must be finite, got {value}")
    if not 0.0 <= value <= hi:
        raise MessageError(f"field '{name}' must be in [0, {hi:g}], got {value:g}")
    return value


def _show(value: object) -> str:
    """Short, safe rendering of a bad value for an error message."""
    text = json.dumps(value) if isinstance(value, str | int | float | bool | None) else None
    if text is None:
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


_FIELDS: dict[str, tuple[str, ...]] = {
    "init": ("num_workers", "epsilon"),
    "reset": ("rank", "t", "te"),
    "report": ("rank", "k", "c", "te"),
    "query": ("rank", "k", "c", "te"),
    "hold": ("rank", "t", "k", "c", "te"),
}
_OPTIONAL: dict[str, tuple[str, ...]] = {"init": ("rejoin",)}  # may be absent


def _check_fields(kind: str, obj: Mapping[str, object], ignore: tuple[str, ...] = ()) -> None:
    """Every field of ``kind`` present, nothing else (besides its optional ones and
    ``ignore``)."""
    wanted = _FIELDS[kind]
    missing = [f for f in wanted if f not in obj]
    if missing:
        raise MessageError(f"{kind} message: missing field(s) {', '.join(map(repr, missing))}")
    extra = sorted(set(obj) - set(wanted) - set(_OPTIONAL.get(kind, ())) - set(ignore))
    if extra:
        raise MessageError(f"{kind} message: unexpected field(s) {', '.join(map(repr, extra))}")


def _build(kind: str, obj: Mapping[str, object], lenient: bool) -> WorkerMsg:
    """Validate the fields of an already field-checked message and build its dataclass."""
    get = obj.__getitem__
    if kind == "init":
        return InitMsg(
            num_workers=_as_int("num_workers", get("num_workers"), 1, MAX_NUM_WORKERS, lenient),
            epsilon=_as_float("epsilon", get("epsilon"), MAX_SECONDS, lenient),
            rejoin=_as_bool("rejoin", obj.get("rejoin", False), lenient),
        )
    rank = _as_int("rank", get("rank"), 0, MAX_NUM_WORKERS - 1, lenient)
    te = _as_float("te", get("te"), MAX_UNIX_TIME, lenient)
    if kind == "reset":
        return ResetMsg(rank=rank, t=_as_int("t", get("t"), 0, MAX_INT, lenient), te=te)
    k = _as_int("k", get("k"), 0, MAX_INT, lenient)
    c = _as_float("c", get("c"), MAX_SECONDS, lenient)
    if kind == "hold":
        t = _as_int("t", get("t"), 0, MAX_INT, lenient)
        return HoldMsg(rank=rank, t=t, k=k, c=c, te=te)
    cls = ReportMsg if kind == "report" else QueryMsg
    return cls(rank=rank, k=k, c=c, te=te)


# --- public parsers -------------------------------------------------------------------


def parse_message(obj: object) -> WorkerMsg:
    """Parse a decoded JSON object sent by a worker (the typed ``/msg/`` endpoint)."""
    if not isinstance(obj, dict):
        raise MessageError(f"message must be a JSON object, got {_json_type(obj)}")
    msg_type = obj.get("msg_type")
    if msg_type is None:
        raise MessageError("missing field 'msg_type'")
    if msg_type == "response":
        raise MessageError("msg_type 'response' is sent by the server, not to it")
    if msg_type not in ("reset", "init", "report", "query", "hold"):
        raise MessageError(
            f"unknown msg_type {_show(msg_type)}; expected reset, init, report, query or hold"
        )
    kind = msg_type
    if msg_type == "reset" and ("num_workers" in obj or "epsilon" in obj):
        kind = "init"
    if msg_type == "init":
        kind = "init"
    _check_fields(kind, obj, ignore=("msg_type",))
    return _build(kind, obj, lenient=False)


def parse_fields(kind: str, fields: Mapping[str, object]) -> WorkerMsg:
    """Parse the fields of an upstream route (form or JSON body; numeric strings allowed).

    ``kind`` is ``init``, ``reset`` or ``query``; upstream ``reset`` names the rank ``r``.
    """
    if kind not in _FIELDS or kind == "hold":
        raise MessageError(f"unknown message kind {kind!r}")
    if kind != "init":
        if "rank" in fields:
            raise MessageError(f"{kind} message: the upstream route names the rank 'r'")
        fields = {("rank" if key == "r" else key): val for key, val in fields.items()}
    _check_fields(kind, fields)
    return _build(kind, fields, lenient=True)


def _check_reply_type(obj: object, msg_type: str) -> dict[str, Any]:
    """``obj`` as a JSON object whose ``msg_type`` is ``msg_type``."""
    article = "an" if msg_type[0] in "aeiou" else "a"
    if not isinstance(obj, dict):
        raise MessageError(f"expected {article} {msg_type} message, got {_show_obj(obj)}")
    if obj.get("msg_type") != msg_type:
        got = obj.get("msg_type")
        what = "no msg_type" if got is None else f"msg_type {_show(got)}"
        raise MessageError(f"expected {article} {msg_type} message, got an object with {what}")
    return obj


def parse_response(obj: object) -> ResponseMsg:
    """Parse the server's answer to a query (used by the client)."""
    obj = _check_reply_type(obj, "response")
    action = obj.get("action")
    if action not in ACTIONS:
        raise MessageError(f"response: action must be compute or sync, got {_show(action)}")
    rank = _as_int("rank", obj.get("rank"), 0, MAX_NUM_WORKERS - 1, False)
    rnd = _as_int("round", obj.get("round"), 0, MAX_INT, False)
    extra: dict[str, Any] = {
        name: _as_float(name, obj[name], MAX_SECONDS, False)
        for name in _OPTIONAL_RESPONSE
        if obj.get(name) is not None
    }
    if "final" in obj:
        extra["final"] = _as_bool("final", obj["final"], False)
    return ResponseMsg(rank=rank, round=rnd, action=action, **extra)


def parse_ack(obj: object, of: str | None = None) -> AckMsg:
    """Parse the server's answer to an init, reset or report (used by the client).

    ``of``, when given, is the message kind the ack must acknowledge. An ack of ``reset`` or
    ``report`` carries the worker's rank; an ack of ``init`` has none.
    """
    obj = _check_reply_type(obj, "ack")
    kind = obj.get("of")
    if kind not in ACKED:
        raise MessageError(f"ack: 'of' must be init, reset or report, got {_show(kind)}")
    if of is not None and kind != of:
        raise MessageError(f"ack: expected an ack of {of}, got an ack of {kind}")
    rnd = _as_int("round", obj.get("round"), 0, MAX_INT, False)
    rank = obj.get("rank")
    if kind == "init":
        if rank is not None:
            raise MessageError(f"ack of init: unexpected field 'rank' ({_show(rank)})")
    else:
        rank = _as_int("rank", rank, 0, MAX_NUM_WORKERS - 1, False)
    return AckMsg(of=kind, round=rnd, rank=rank)


def _reject_constant(name: str) -> float:
    raise MessageError(f"body is not valid JSON: {name} is not a number in JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in pairs:
        if key in out:
            raise MessageError(f"body is not valid JSON: duplicate key {key!r}")
        out[key] = val
    return out


def decode_json(body: bytes, limit: int = MAX_BODY_BYTES) -> object:
    """Decode a request body as strict JSON: at most ``limit`` bytes (else 413), UTF-8, no
    NaN/Infinity, no duplicate keys. Every failure is a :class:`MessageError` saying why."""
    if len(body) > limit:
        raise MessageError(f"body of {len(body)} bytes exceeds {limit} bytes", status=413)
    if not body.strip():
        raise MessageError("body is empty; expected a JSON object")
    try:
        text = body.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        raise MessageError(f"body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise MessageError("body is not valid JSON: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise MessageError(f"body is not valid JSON: {exc.msg} at char {exc.pos}") from None
    except MessageError:
        raise
    except ValueError as exc:  # e.g. an integer literal with too many digits
        raise MessageError(f"body is not valid JSON: {exc}") from None


def _json_type(obj: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(obj), "number")


def _show_obj(obj: object) -> str:
    return _show(obj) if not isinstance(obj, dict | list) else _json_type(obj)


_WIRE_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls) if f.name not in ("msg_type", "rejoin"))
    for cls in (InitMsg, ResetMsg, ReportMsg, QueryMsg, HoldMsg)
}


def message_to_dict(msg: WorkerMsg) -> dict[str, Any]:
    """Wire form of a worker message (what the client sends to ``/msg/``), ``msg_type`` first.

    :func:`parse_message` of the result gives ``msg`` back. Plain attribute reads (no
    ``dataclasses.asdict``): the client calls this once per batch.
    """
    try:
        names = _WIRE_FIELDS[type(msg)]
    except KeyError:
        raise TypeError(f"not a worker message: {type(msg).__name__}") from None
    out: dict[str, Any] = {"msg_type": msg.msg_type}
    for name in names:
        out[name] = getattr(msg, name)
    if type(msg) is InitMsg and msg.rejoin:  # absent when false: a plain init stays upstream's
        out["rejoin"] = True
    return out

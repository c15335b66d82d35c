"""The MXNet (ps-lite) side: DMLC environment checks, roles, KVStore creation."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping

import config

ROLES = ("scheduler", "server", "worker")


class ClusterConfigError(Exception):
    """DMLC environment variables are missing or inconsistent."""


def dmlc_role(env: Mapping[str, str] = os.environ) -> str | None:
    """The DMLC_ROLE of this process, or None for a standalone run."""
    role = env.get("DMLC_ROLE")
    if role is None or role == "":
        return None
    if role not in ROLES:
        raise ClusterConfigError(f"DMLC_ROLE={role!r} is not one of {', '.join(ROLES)}")
    return role


def _int_var(env: Mapping[str, str], name: str, low: int, high: int) -> int:
    text = env.get(name)
    if text is None or text == "":
        raise ClusterConfigError(f"{name} is not set")
    try:
        value = int(text)
    except ValueError:
        raise ClusterConfigError(f"{name}={text!r} is not an integer") from None
    if not low <= value <= high:
        raise ClusterConfigError(f"{name}={value} is out of range {low}..{high}")
    return value


def check_dmlc_env(env: Mapping[str, str] = os.environ) -> dict[str, object]:
    """Validate the variables ps-lite needs, so a mistake is an error and not a silent hang."""
    problems: list[str] = []
    values: dict[str, object] = {}
    uri = env.get("DMLC_PS_ROOT_URI", "")
    if not uri:
        problems.append("DMLC_PS_ROOT_URI is not set (the scheduler's IP address)")
    values["DMLC_PS_ROOT_URI"] = uri
    for name, low, high in (
        ("DMLC_PS_ROOT_PORT", 1, 65535),
        ("DMLC_NUM_SERVER", 1, 1024),
        ("DMLC_NUM_WORKER", 1, 4096),
    ):
        try:
            values[name] = _int_var(env, name, low, high)
        except ClusterConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ClusterConfigError(
            "cannot join the MXNet cluster: "
            + "; ".join(problems)
            + ". Set DMLC_ROLE, DMLC_PS_ROOT_URI, DMLC_PS_ROOT_PORT, DMLC_NUM_SERVER and "
            "DMLC_NUM_WORKER identically on every node (see docs/deployment.md)."
        )
    return values


def run_scheduler_or_server(role: str, failure_timeout: float = config.FAILURE_TIMEOUT_S) -> int:
    """Run the ps-lite scheduler or the parameter server until training ends; the exit code.

    MXNet would start both from inside ``import mxnet`` (``_init_kvstore_server_module``) and
    ``sys.exit()`` there, leaving no room for a watchdog. So MXNet is imported with
    ``DMLC_ROLE=worker`` (ps-lite reads the variable with ``getenv`` each time it asks, and
    nothing starts at import for a worker), the real role is restored, and the same steps are
    done here: create the ``dist`` store (which does not start ps-lite for these roles),
    start the failure watchdog on its handle, and serve until every worker has finished.
    """
    from trainer import watchdog

    check_dmlc_env()
    watchdog.configure_heartbeats(failure_timeout)
    print(
        f"[{role}] starting MXNet {role} for {os.environ['DMLC_NUM_WORKER']} workers at "
        f"{os.environ['DMLC_PS_ROOT_URI']}:{os.environ['DMLC_PS_ROOT_PORT']} "
        f"(--failure-timeout {failure_timeout:g} s)",
        flush=True,
    )
    mx = _import_mxnet_without_serving(role)
    from mxnet.kvstore.kvstore_server import KVStoreServer

    kv = mx.kv.create("dist")
    guard = watchdog.watch_ps_node(role, kv.handle, failure_timeout)
    KVStoreServer(kv).run()  # returns once every node has passed ps-lite's final barrier
    guard.stop()
    print(f"[{role}] training ended; exiting", flush=True)
    return 0


def _import_mxnet_without_serving(role: str):
    """``import mxnet`` in a scheduler / server process without running the role inside it."""
    if "mxnet" in sys.modules:
        raise ClusterConfigError(f"MXNet was imported before the {role} could be set up")
    os.environ["DMLC_ROLE"] = "worker"
    try:
        import mxnet
    finally:
        os.environ["DMLC_ROLE"] = role
    return mxnet


class JoinWatchdog:
    """Exit the process with a clear message when joining the cluster takes too long.

    ps-lite blocks forever when the scheduler is unreachable or when the node counts differ
    between nodes; use ``with JoinWatchdog(timeout):`` around KVStore creation and init.
    """

    def __init__(self, timeout: float, env: Mapping[str, str] = os.environ) -> None:
        self.timeout = timeout
        self.env = check_dmlc_env(env)
        self._done = threading.Event()

    def __enter__(self) -> JoinWatchdog:
        threading.Thread(target=self._watch, name="join-watchdog", daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()

    def _watch(self) -> None:
        if self._done.wait(self.timeout):
            return
        env = self.env
        print(
            f"error: the MXNet cluster did not form within {self.timeout:.0f} s: no answer "
            f"from the scheduler at {env['DMLC_PS_ROOT_URI']}:{env['DMLC_PS_ROOT_PORT']}, or "
            f"not all {env['DMLC_NUM_WORKER']} workers and {env['DMLC_NUM_SERVER']} servers "
            "joined (are DMLC_NUM_WORKER / DMLC_NUM_SERVER the same on every node?)",
            file=sys.stderr,
            flush=True,
        )
        os._exit(3)


def create_kvstore(kv_type: str):
    """Create a distributed KVStore (call inside a JoinWatchdog), watched for dead nodes."""
    import mxnet as mx

    from trainer.watchdog import watch_worker_kvstore

    kv = mx.kv.create(kv_type)
    expected = int(os.environ["DMLC_NUM_WORKER"])
    if kv.num_workers != expected:
        raise ClusterConfigError(
            f"KVStore reports {kv.num_workers} workers but DMLC_NUM_WORKER={expected}"
        )
    watch_worker_kvstore(kv)  # exits this process when a node dies (trainer/watchdog.py)
    return kv

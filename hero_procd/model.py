"""Domain records, states and the parsing of command specs.

States are plain string enums with named groups, and every state machine
has an explicit transition table (walked by tests/test_model.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from hero_procd.errors import InvalidParams
from hero_procd.params import Params

DEFAULT_INTERPRETER = ["/bin/sh"]
DEFAULT_KILL_TIMEOUT_S = 5.0


class JobStatus(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"
    SKIPPED = "skipped"


ACTIVE_JOB_STATES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
TERMINAL_JOB_STATES = frozenset(set(JobStatus) - ACTIVE_JOB_STATES)

JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.SKIPPED}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.TIMED_OUT,
            JobStatus.LOST,
            JobStatus.QUEUED,  # a retry after backoff, or recovery with retries left
        }
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.TIMED_OUT: frozenset(),
    JobStatus.LOST: frozenset(),
    JobStatus.SKIPPED: frozenset(),
}


class RunStatus(StrEnum):
    """A run's status, derived from its jobs."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ServiceState(StrEnum):
    """The live state of a supervised service."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    EXITED = "exited"
    FATAL = "fatal"


RUNNING_SERVICE_STATES = frozenset(
    {ServiceState.STARTING, ServiceState.RUNNING, ServiceState.STOPPING}
)
STOPPED_SERVICE_STATES = frozenset({ServiceState.STOPPED, ServiceState.EXITED, ServiceState.FATAL})

SERVICE_TRANSITIONS: dict[ServiceState, frozenset[ServiceState]] = {
    ServiceState.STOPPED: frozenset({ServiceState.STARTING}),
    ServiceState.STARTING: frozenset(
        {ServiceState.RUNNING, ServiceState.BACKOFF, ServiceState.STOPPING, ServiceState.EXITED}
    ),
    ServiceState.RUNNING: frozenset(
        {ServiceState.STOPPING, ServiceState.BACKOFF, ServiceState.EXITED}
    ),
    ServiceState.BACKOFF: frozenset(
        {ServiceState.STARTING, ServiceState.FATAL, ServiceState.STOPPED}
    ),
    ServiceState.STOPPING: frozenset({ServiceState.STOPPED}),
    ServiceState.EXITED: frozenset({ServiceState.STARTING}),
    ServiceState.FATAL: frozenset({ServiceState.STARTING}),
}


def now() -> float:
    """Wall-clock time in seconds, as stored in the database."""
    return time.time()


@dataclass(frozen=True)
class CommandSpec:
    """What to execute and how: argv or script + interpreter, env, cwd, limits.

    Any field may be None in an override (a job that names an action);
    `merged_over` fills it from the action.
    """

    command: list[str] | None = None
    script: str | None = None
    interpreter: list[str] | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    timeout_s: float | None = None
    kill_timeout_s: float | None = None
    retries: int | None = None
    retry_delay_s: float | None = None

    def merged_over(self, base: CommandSpec) -> CommandSpec:
        """This spec's fields where set, the base's elsewhere; env is merged key by key."""
        env = dict(base.env or {})
        env.update(self.env or {})
        has_own_command = self.command is not None or self.script is not None
        return CommandSpec(
            command=self.command if has_own_command else base.command,
            script=self.script if has_own_command else base.script,
            interpreter=(self.interpreter or base.interpreter)
            if has_own_command
            else base.interpreter,
            env=env or None,
            cwd=self.cwd if self.cwd is not None else base.cwd,
            timeout_s=self.timeout_s if self.timeout_s is not None else base.timeout_s,
            kill_timeout_s=(
                self.kill_timeout_s if self.kill_timeout_s is not None else base.kill_timeout_s
            ),
            retries=self.retries if self.retries is not None else base.retries,
            retry_delay_s=self.retry_delay_s
            if self.retry_delay_s is not None
            else base.retry_delay_s,
        )

    def with_defaults(self) -> CommandSpec:
        """The spec as it will run: default interpreter, retries and kill timeout filled in."""
        if (
            self.retries is not None
            and self.kill_timeout_s is not None
            and (self.script is None or self.interpreter is not None)
        ):
            return self
        return replace(
            self,
            interpreter=self.interpreter
            or (DEFAULT_INTERPRETER if self.script is not None else None),
            retries=self.retries if self.retries is not None else 0,
            kill_timeout_s=(
                self.kill_timeout_s if self.kill_timeout_s is not None else DEFAULT_KILL_TIMEOUT_S
            ),
        )

    def argv(self) -> list[str]:
        """The argv to execute: the command, or the interpreter running the script."""
        if self.command is not None:
            return list(self.command)
        if self.script is not None:
            return [*(self.interpreter or DEFAULT_INTERPRETER), "-c", self.script]
        raise ValueError("spec has neither command nor script")

    def to_dict(self) -> dict[str, Any]:
        """The spec as stored and shown, without unset fields."""
        # Not dataclasses.asdict: its deep copy cost 100 us a job in run.submit.
        out: dict[str, Any] = {}
        for name in _SPEC_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CommandSpec:
        """Rebuild a stored spec."""
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


_SPEC_FIELDS = tuple(f.name for f in fields(CommandSpec))


def parse_command_spec(p: Params, *, require_command: bool) -> CommandSpec:
    """Read the command fields of `p`; `require_command` demands a command or a script."""
    command = p.text_list("command", non_empty=True)
    script = p.text("script")
    interp_raw = p.raw("interpreter")
    interpreter: list[str] | None
    if interp_raw is None:
        interpreter = None
    elif isinstance(interp_raw, str):
        interpreter = [interp_raw]
    else:
        interpreter = p.text_list("interpreter", non_empty=True)
    if command is not None and script is not None:
        raise InvalidParams(p.path("script"), "give either command or script, not both")
    if interpreter is not None and script is None:
        raise InvalidParams(p.path("interpreter"), "only goes with script")
    if require_command and command is None and script is None:
        raise InvalidParams(p.path("command"), "one of command or script is required")
    cwd = p.text("cwd")
    if cwd is not None and not cwd.startswith("/"):
        raise InvalidParams(p.path("cwd"), "must be an absolute path")
    return CommandSpec(
        command=command,
        script=script,
        interpreter=interpreter,
        env=p.text_map("env"),
        cwd=cwd,
        timeout_s=p.number("timeout_s", positive=True),
        kill_timeout_s=p.number("kill_timeout_s", minimum=0),
        retries=p.integer("retries", minimum=0, maximum=1000),
        retry_delay_s=p.number("retry_delay_s", minimum=0),
    )


@dataclass(frozen=True)
class JobRequest:
    """A job as submitted, before it has an id: either its own command or an action's."""

    spec: CommandSpec
    action: str | None = None
    tags: list[str] = field(default_factory=list)
    priority: int = 0
    group: str | None = None
    dedup_key: str | None = None
    key: str | None = None
    depends_on: list[str] = field(default_factory=list)


def parse_job_request(p: Params, *, in_run: bool = False, partial: bool = False) -> JobRequest:
    """Read one job of `job.submit` or of `run.submit`'s `jobs` (`partial`: batch defaults)."""
    action = p.text("action", name_like=True)
    spec = parse_command_spec(p, require_command=action is None and not partial)
    if action is not None and (spec.command is not None or spec.script is not None):
        raise InvalidParams(p.path("action"), "give either action or command/script, not both")
    key: str | None = None
    depends_on: list[str] = []
    if in_run:
        key = p.req_text("key")
        depends_on = p.text_list("depends_on") or []
    request = JobRequest(
        spec=spec,
        action=action,
        tags=p.text_list("tags") or [],
        priority=p.integer("priority", default=0, minimum=-(2**31), maximum=2**31 - 1) or 0,
        group=p.text("group", name_like=True),
        dedup_key=p.text("dedup_key"),
        key=key,
        depends_on=depends_on,
    )
    p.finish()
    return request


def check_run_graph(jobs: list[JobRequest]) -> None:
    """Reject duplicate keys, unknown `depends_on` keys and cycles."""
    keys: dict[str, int] = {}
    for i, job in enumerate(jobs):
        assert job.key is not None
        if job.key in keys:
            raise InvalidParams(f"jobs[{i}].key", f"duplicate key {job.key!r}")
        keys[job.key] = i
    for i, job in enumerate(jobs):
        for j, dep in enumerate(job.depends_on):
            if dep not in keys:
                raise InvalidParams(f"jobs[{i}].depends_on[{j}]", f"unknown key {dep!r}")
            if dep == job.key:
                raise InvalidParams(f"jobs[{i}].depends_on[{j}]", "a job cannot depend on itself")
    # Kahn's algorithm: whatever cannot be ordered sits on a cycle.
    indegree = {job.key: len(set(job.depends_on)) for job in jobs if job.key is not None}
    dependents: dict[str, list[str]] = {k: [] for k in indegree}
    for job in jobs:
        for dep in set(job.depends_on):
            assert job.key is not None
            dependents[dep].append(job.key)
    ready = [k for k, n in indegree.items() if n == 0]
    ordered = 0
    while ready:
        k = ready.pop()
        ordered += 1
        for d in dependents[k]:
            indegree[d] -= 1
            if indegree[d] == 0:
                ready.append(d)
    if ordered != len(jobs):
        # What is left waits on a cycle; peel off those nothing left depends on,
        # so the message names the keys on the cycle, not those behind it.
        left = {k for k, n in indegree.items() if n > 0}
        while True:
            behind = {k for k in left if not any(d in left for d in dependents[k])}
            if not behind:
                break
            left -= behind
        raise InvalidParams("jobs", f"dependency cycle among keys {', '.join(sorted(left))}")


SIGNAL_NAMES = ("TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2")


def parse_service_spec(p: Params) -> dict[str, Any]:
    """Read `service.define` params (less the name) into the stored spec."""
    spec = parse_command_spec(p, require_command=True).to_dict()
    spec.pop("retries", None)
    spec.pop("retry_delay_s", None)
    if p.has("retries") or p.has("retry_delay_s"):
        raise InvalidParams(
            p.path("retries"), "services restart by policy; use restart/start_limit"
        )
    opts: dict[str, Any] = {
        "restart": p.choice("restart", ("always", "on-failure", "never"), default="on-failure"),
        "start_secs": p.number("start_secs", default=1.0, minimum=0),
        "restart_delay_s": p.number("restart_delay_s", default=1.0, minimum=0),
        "restart_delay_max_s": p.number("restart_delay_max_s", default=60.0, minimum=0),
        "start_limit": p.integer("start_limit", default=5, minimum=0),
        "start_window_s": p.number("start_window_s", default=60.0, positive=True),
        "stop_signal": p.choice("stop_signal", SIGNAL_NAMES, default="TERM"),
        "stop_timeout_s": p.number("stop_timeout_s", default=10.0, minimum=0),
        "oneshot": p.boolean("oneshot", default=False),
        "autostart": p.boolean("autostart", default=False),
        "requires": p.text_list("requires", name_like=True) or [],
        "after": p.text_list("after", name_like=True) or [],
        "tags": p.text_list("tags") or [],
        "restart_on_unhealthy": p.boolean("restart_on_unhealthy", default=False),
    }
    health = p.obj("health")
    if health is not None:
        opts["health"] = _parse_health(health)
    spec.update(opts)
    return spec


def _parse_health(h: Params) -> dict[str, Any]:
    kinds = [k for k in ("exec", "tcp", "http", "unix") if h.has(k)]
    if len(kinds) != 1:
        raise InvalidParams(h.path("exec"), "give exactly one of exec, tcp, http, unix")
    kind = kinds[0]
    check: dict[str, Any] = {}
    if kind == "exec":
        check["exec"] = h.text_list("exec", non_empty=True)
    else:
        check[kind] = h.text(kind)
    check["interval_s"] = h.number("interval_s", default=10.0, positive=True)
    check["timeout_s"] = h.number("timeout_s", default=5.0, positive=True)
    check["retries"] = h.integer("retries", default=3, minimum=1)
    h.finish()
    return check

"""Domain records, states and the parsing of command specs.

States are plain string enums with named groups, and every state machine
has an explicit transition table (walked by tests/test_model.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from itertools import chain, repeat
from operator import attrgetter
from typing import Any

from hero_procd.errors import InvalidParams
from hero_procd.params import (
    INT64_MAX,
    MAX_ENV_STRING,
    MAX_SECONDS,
    NAME_RE,
    NUL,
    Params,
    check_env_name,
    env_string_size,
)

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

# The service fields that shape its process: a change restarts a running service
# (stack.apply, service.update); the others take effect at its next start.
PROCESS_FIELDS = frozenset(
    {
        "command",
        "script",
        "interpreter",
        "env",
        "env_from_secrets",
        "cwd",
        # Containment (engine/contain.py): the cell's limits and how the process is watched.
        "type",
        "pid_file",
        "memory_max",
        "cpu_max",
        "pids_max",
        "io_weight",
    }
)


def process_part(spec: dict[str, Any]) -> dict[str, Any]:
    """The fields of a service definition that shape its process."""
    part = {k: spec.get(k) for k in PROCESS_FIELDS}
    # Definitions stored before `type` existed are simple services: not a change.
    part["type"] = part["type"] or "simple"
    return part


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


# Not frozen: a frozen dataclass sets each field through object.__setattr__,
# which made building 50,000 job requests cost twice as much. Treat as immutable.
@dataclass(slots=True)
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
    env_from_secrets: dict[str, str] | None = None
    # Resource limits, applied to the cgroup of each attempt or run (engine/contain.py).
    memory_max: int | None = None
    cpu_max: float | None = None
    pids_max: int | None = None
    io_weight: int | None = None

    def merged_over(self, base: CommandSpec) -> CommandSpec:
        """This spec's fields where set, the base's elsewhere; env is merged key by key."""
        env = dict(base.env or {})
        env.update(self.env or {})
        secrets = dict(base.env_from_secrets or {})
        secrets.update(self.env_from_secrets or {})
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
            env_from_secrets=secrets or None,
            memory_max=self.memory_max if self.memory_max is not None else base.memory_max,
            cpu_max=self.cpu_max if self.cpu_max is not None else base.cpu_max,
            pids_max=self.pids_max if self.pids_max is not None else base.pids_max,
            io_weight=self.io_weight if self.io_weight is not None else base.io_weight,
        )

    def limits(self) -> dict[str, Any]:
        """The resource limits set on this spec (memory_max, cpu_max, pids_max, io_weight)."""
        return {name: value for name in _LIMIT_FIELDS if (value := getattr(self, name)) is not None}

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
        values = _spec_values(self)
        if values.count(None) == _BARE_NONES and values[0] is not None:
            return {"command": values[0]}  # most jobs of a big batch: 3x faster
        return {
            name: value
            for name, value in zip(_SPEC_FIELDS, values, strict=True)
            if value is not None
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CommandSpec:
        """Rebuild a stored spec."""
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


_SPEC_FIELDS = tuple(f.name for f in fields(CommandSpec))
_LIMIT_FIELDS = ("memory_max", "cpu_max", "pids_max", "io_weight")
# Bounds of the limit fields: (smallest, largest) as the kernel takes them.
_LIMIT_BOUNDS: dict[str, tuple[float, float]] = {
    "memory_max": (4096, INT64_MAX),
    "cpu_max": (0.01, 1024.0),
    "pids_max": (1, 4_194_304),
    "io_weight": (1, 10_000),
}


def _limit(value: Any, path: str, name: str) -> int | float:
    low, high = _LIMIT_BOUNDS[name]
    integral = name != "cpu_max"
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidParams(_where(path, name), "must be a number")
    if integral and not isinstance(value, int):
        raise InvalidParams(_where(path, name), "must be an integer")
    if not low <= value <= high:
        raise InvalidParams(_where(path, name), f"must be between {low:g} and {high:g}")
    return value if integral else float(value)


_COMMAND_KEYS = frozenset(_SPEC_FIELDS)
_OPTIONAL_SPEC_KEYS = _COMMAND_KEYS - {"command", "script", "interpreter"}
_spec_values = attrgetter(*_SPEC_FIELDS)
# A spec with a command and nothing else has this many unset fields (command comes first).
_BARE_NONES = len(_SPEC_FIELDS) - 1
assert _SPEC_FIELDS[0] == "command"


def _where(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _str_list(value: Any, path: str, name: str) -> list[str]:
    if not isinstance(value, list):
        raise InvalidParams(_where(path, name), "must be a list of strings")
    if not value:
        raise InvalidParams(_where(path, name), "must not be empty")
    for i, item in enumerate(value):
        # argv items are C strings: a NUL would cut "a\0b" to "a" at spawn.
        if not isinstance(item, str) or NUL in item:
            raise InvalidParams(
                f"{_where(path, name)}[{i}]",
                "must not contain a NUL character" if isinstance(item, str) else "must be a string",
            )
    return value


def _number(value: Any, path: str, name: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParams(_where(path, name), "must be a number")
    # NaN fails every comparison, hence `not value <= MAX_SECONDS`; infinities and ints
    # past float range are refused before float() could overflow.
    if not value <= MAX_SECONDS:
        raise InvalidParams(_where(path, name), "must be a finite number")
    if value < 0 or (positive and value == 0):
        raise InvalidParams(
            _where(path, name), "must be a number > 0" if positive else "must be >= 0"
        )
    return float(value)


def command_spec_from(raw: Mapping[str, Any], path: str, *, require_command: bool) -> CommandSpec:
    """Read and check the command fields of one JSON object.

    Hand-written rather than through `Params`: it runs once per job of a
    50,000-job batch, where the generic readers cost 20 us a job.
    """
    get = raw.get
    command = get("command")
    script = get("script")
    interpreter = get("interpreter")
    if _OPTIONAL_SPEC_KEYS.isdisjoint(raw):
        # The usual batch item names a command and little else: one pass over its keys
        # instead of nine lookups of fields it does not have.
        return _bare_spec(command, script, interpreter, path, require_command=require_command)
    env = get("env")
    cwd = get("cwd")
    command, script, interpreter = _program(
        command, script, interpreter, path, require_command=require_command
    )
    if env is not None:
        if not isinstance(env, dict):
            raise InvalidParams(_where(path, "env"), "must be an object of strings")
        for key, value in env.items():
            check_env_name(key, f"{_where(path, 'env')}.{key!r}")
            if not isinstance(value, str):
                raise InvalidParams(f"{_where(path, 'env')}.{key}", "must be a string")
            if NUL in value:
                raise InvalidParams(
                    f"{_where(path, 'env')}.{key}", "must not contain a NUL character"
                )
            size = env_string_size(key, value)
            if size > MAX_ENV_STRING:
                raise InvalidParams(
                    f"{_where(path, 'env')}.{key}",
                    f"too long to be an environment variable: NAME=value is {size} bytes "
                    f"with its NUL, the kernel takes at most {MAX_ENV_STRING}",
                )
    env_from_secrets = get("env_from_secrets")
    if env_from_secrets is not None:
        if not isinstance(env_from_secrets, dict):
            raise InvalidParams(_where(path, "env_from_secrets"), "must be an object {VAR: secret}")
        for key, value in env_from_secrets.items():
            check_env_name(key, f"{_where(path, 'env_from_secrets')}.{key!r}")
            if not isinstance(value, str) or not NAME_RE.fullmatch(value):
                raise InvalidParams(
                    f"{_where(path, 'env_from_secrets')}.{key}", "must be a secret name"
                )
    if cwd is not None:
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise InvalidParams(_where(path, "cwd"), "must be an absolute path")
        if NUL in cwd:  # "/tmp\0/nope" would run in /tmp: chdir takes a C string
            raise InvalidParams(_where(path, "cwd"), "must not contain a NUL character")
    timeout_s = get("timeout_s")
    kill_timeout_s = get("kill_timeout_s")
    retries = get("retries")
    retry_delay_s = get("retry_delay_s")
    if retries is not None:
        if isinstance(retries, bool) or not isinstance(retries, int):
            raise InvalidParams(_where(path, "retries"), "must be an integer")
        if retries < 0:
            raise InvalidParams(_where(path, "retries"), "must be >= 0")
        if retries > 1000:
            raise InvalidParams(_where(path, "retries"), "must be <= 1000")
    return CommandSpec(
        command=command,
        script=script,
        interpreter=interpreter,
        env=env,
        cwd=cwd,
        timeout_s=None
        if timeout_s is None
        else _number(timeout_s, path, "timeout_s", positive=True),
        kill_timeout_s=(
            None
            if kill_timeout_s is None
            else _number(kill_timeout_s, path, "kill_timeout_s", positive=False)
        ),
        retries=retries,
        retry_delay_s=(
            None
            if retry_delay_s is None
            else _number(retry_delay_s, path, "retry_delay_s", positive=False)
        ),
        env_from_secrets=env_from_secrets,
        memory_max=_opt_int_limit(get("memory_max"), path, "memory_max"),
        cpu_max=None if get("cpu_max") is None else float(_limit(get("cpu_max"), path, "cpu_max")),
        pids_max=_opt_int_limit(get("pids_max"), path, "pids_max"),
        io_weight=_opt_int_limit(get("io_weight"), path, "io_weight"),
    )


def _opt_int_limit(value: Any, path: str, name: str) -> int | None:
    return None if value is None else int(_limit(value, path, name))


def _program(
    command: Any, script: Any, interpreter: Any, path: str, *, require_command: bool
) -> tuple[list[str] | None, str | None, list[str] | None]:
    """What to run: command, or script with its interpreter, checked."""
    if command is not None:
        command = _str_list(command, path, "command")
    if script is not None:
        if not isinstance(script, str):
            raise InvalidParams(_where(path, "script"), "must be a string")
        if NUL in script:
            raise InvalidParams(_where(path, "script"), "must not contain a NUL character")
    if interpreter is not None:
        # A lone string is one argv item: checked as the list it becomes.
        interpreter = _str_list(
            [interpreter] if isinstance(interpreter, str) else interpreter, path, "interpreter"
        )
    if command is not None and script is not None:
        raise InvalidParams(_where(path, "script"), "give either command or script, not both")
    if interpreter is not None and script is None:
        raise InvalidParams(_where(path, "interpreter"), "only goes with script")
    if require_command and command is None and script is None:
        raise InvalidParams(_where(path, "command"), "one of command or script is required")
    return command, script, interpreter


def _bare_spec(
    command: Any, script: Any, interpreter: Any, path: str, *, require_command: bool
) -> CommandSpec:
    """`command_spec_from` of an object with no field beyond command, script, interpreter."""
    command, script, interpreter = _program(
        command, script, interpreter, path, require_command=require_command
    )
    return CommandSpec(command=command, script=script, interpreter=interpreter)


def parse_command_spec(p: Params, *, require_command: bool) -> CommandSpec:
    """Read the command fields of `p`; `require_command` demands a command or a script."""
    return command_spec_from(p.take(_COMMAND_KEYS), p.path(""), require_command=require_command)


@dataclass(slots=True)
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
    node: str | None = None  # placement: only this node may claim it


_JOB_KEYS = _COMMAND_KEYS | {"action", "tags", "priority", "group", "dedup_key", "node"}
_RUN_JOB_KEYS = _JOB_KEYS | {"key", "depends_on"}
_JOB_ONLY_KEYS = _JOB_KEYS - _COMMAND_KEYS
_INT32 = 2**31


def job_request_from(
    raw: Any, path: str = "", *, in_run: bool = False, partial: bool = False
) -> JobRequest:
    """Read one job of `job.submit`, `job.submit_batch` or `run.submit`; `partial`: defaults."""
    if not isinstance(raw, dict):
        raise InvalidParams(path or None, "must be an object")
    allowed = _RUN_JOB_KEYS if in_run else _JOB_KEYS
    if not allowed.issuperset(raw):  # no set built for the items that are fine
        raise InvalidParams(_where(path, min(raw.keys() - allowed)), "unknown field")
    if not in_run and _JOB_ONLY_KEYS.isdisjoint(raw):
        # A bare command (the usual batch item): the job's own fields keep their defaults.
        return JobRequest(command_spec_from(raw, path, require_command=not partial))
    get = raw.get
    action = get("action")
    if action is not None and (not isinstance(action, str) or not NAME_RE.fullmatch(action)):
        raise InvalidParams(_where(path, "action"), "must be an action name")
    spec = command_spec_from(raw, path, require_command=action is None and not partial)
    if action is not None and (spec.command is not None or spec.script is not None):
        raise InvalidParams(
            _where(path, "action"), "give either action or command/script, not both"
        )
    tags = get("tags")
    if tags is None:
        tags = []
    elif not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidParams(_where(path, "tags"), "must be a list of strings")
    priority = get("priority", 0)
    if priority is None:
        priority = 0
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not -_INT32 <= priority < _INT32
    ):
        raise InvalidParams(_where(path, "priority"), "must be a 32-bit integer")
    group = get("group")
    if group is not None and (not isinstance(group, str) or not NAME_RE.fullmatch(group)):
        raise InvalidParams(_where(path, "group"), "must be a group name")
    dedup_key = get("dedup_key")
    if dedup_key is not None and not isinstance(dedup_key, str):
        raise InvalidParams(_where(path, "dedup_key"), "must be a string")
    node = get("node")
    if node is not None and (not isinstance(node, str) or not 0 < len(node) <= 255):
        raise InvalidParams(_where(path, "node"), "must be a node name (1 to 255 characters)")
    key: str | None = None
    depends_on: list[str] = []
    if in_run:
        key = get("key")
        if not isinstance(key, str) or not key:
            raise InvalidParams(_where(path, "key"), "is required")
        deps = get("depends_on")
        if deps is not None:
            if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
                raise InvalidParams(_where(path, "depends_on"), "must be a list of strings")
            depends_on = deps
    return JobRequest(spec, action, tags, priority, group, dedup_key, key, depends_on, node)


def bare_job_request(raw: Any) -> JobRequest | None:
    """The request of an item that is `{"command": [...]}` and nothing else (the usual item of
    a big batch), checked as `job_request_from` checks it, in a fraction of its time; None for
    any other item, and for a bad one: `job_request_from` reads those and says what is wrong."""
    if type(raw) is not dict or len(raw) != 1:
        return None
    command = raw.get("command")
    if type(command) is not list or not command:
        return None
    for arg in command:
        if type(arg) is not str or NUL in arg:
            return None
    return JobRequest(CommandSpec(command))


# Items per pass of `bare_job_requests`: a pass is one C loop that holds the GIL (the event
# loop waits for it); slices keep each under ~1 ms.
_BARE_SLICE = 4096


def bare_job_requests(items: list[Any]) -> list[JobRequest] | None:
    """`bare_job_request` of every item of a batch whose items are all bare commands, checked
    by passes that loop in C over a slice of the batch at a time; None if any item is
    something else (then each item is read on its own)."""
    commands: list[Any] = []
    for start in range(0, len(items), _BARE_SLICE):
        part = items[start : start + _BARE_SLICE]
        if set(map(type, part)) != {dict} or set(map(len, part)) != {1}:
            return None
        found: list[Any] = list(map(dict.get, part, repeat("command")))
        if set(map(type, found)) != {list} or not all(found):
            return None
        args = list(chain.from_iterable(found))
        if set(map(type, args)) != {str} or NUL in "".join(args):
            return None
        commands += found
    return [JobRequest(CommandSpec(command)) for command in commands]


def parse_job_request(p: Params, *, in_run: bool = False, partial: bool = False) -> JobRequest:
    """`job_request_from` on a `Params` (all of its fields)."""
    return job_request_from(p.take_all(), p.path(""), in_run=in_run, partial=partial)


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
    for field_name in ("retries", "retry_delay_s"):
        if p.has(field_name):
            raise InvalidParams(
                p.path(field_name), "services restart by policy; use restart/start_limit"
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
        # `forking`: the program puts itself in the background; the service lives
        # while its cgroup holds a process (systemd's Type=forking).
        "type": p.choice("type", ("simple", "forking"), default="simple"),
    }
    pid_file = p.text("pid_file")
    if pid_file is not None:
        if opts["type"] != "forking":
            raise InvalidParams(p.path("pid_file"), "only goes with type forking")
        if not pid_file.startswith("/") and not spec.get("cwd"):
            raise InvalidParams(p.path("pid_file"), "must be absolute (or the service has a cwd)")
        opts["pid_file"] = pid_file
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


def dependency_order(graph: dict[str, list[str]], wanted: Iterable[str]) -> list[str]:
    """`wanted` and what they depend on, dependencies first (stable by name).

    A walk with its own stack, not recursion: a stack file may declare a chain of
    thousands of services, deeper than Python's recursion limit. A cycle is cut
    where it closes (bounded whatever the graph).
    """
    order: list[str] = []
    seen: set[str] = set()
    for root in sorted(wanted):
        if root in seen:
            continue
        on_path = {root}
        todo: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph.get(root, []))))]
        while todo:
            name, deps = todo[-1]
            for dep in deps:
                if dep not in seen and dep not in on_path:
                    on_path.add(dep)
                    todo.append((dep, iter(sorted(graph.get(dep, [])))))
                    break
            else:
                todo.pop()
                on_path.discard(name)
                seen.add(name)
                order.append(name)
    return order


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle of `graph` as a list of names, or None (no recursion: see above)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        state[start] = 1
        path = [start]
        todo: list[Iterator[str]] = [iter(graph.get(start, []))]
        while todo:
            for dep in todo[-1]:
                seen = state.get(dep)
                if seen == 1:
                    return [*path[path.index(dep) :], dep]
                if seen is None:
                    state[dep] = 1
                    path.append(dep)
                    todo.append(iter(graph.get(dep, [])))
                    break
            else:
                todo.pop()
                state[path.pop()] = 2
    return None

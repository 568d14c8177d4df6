"""The model: state machines, command specs, request parsing and run graphs."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

import pytest

from hero_procd import model
from hero_procd.errors import InvalidParams
from hero_procd.model import (
    ACTIVE_JOB_STATES,
    DEFAULT_INTERPRETER,
    DEFAULT_KILL_TIMEOUT_S,
    JOB_TRANSITIONS,
    SERVICE_TRANSITIONS,
    TERMINAL_JOB_STATES,
    CommandSpec,
    JobRequest,
    JobStatus,
    ServiceState,
    bare_job_request,
    bare_job_requests,
    check_run_graph,
    dependency_order,
    find_cycle,
    job_request_from,
    parse_job_request,
    parse_service_spec,
)
from hero_procd.params import Params

S = TypeVar("S", bound=StrEnum)


def reachable(table: Mapping[S, frozenset[S]], start: S) -> set[S]:
    """Every state reachable from `start` (itself included) along the table."""
    seen = {start}
    todo = [start]
    while todo:
        for nxt in table[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


# ---------------------------------------------------------------- state machines


def test_job_transitions_cover_every_state() -> None:
    """Every job state has an entry and every target is a known state."""
    assert set(JOB_TRANSITIONS) == set(JobStatus)
    for targets in JOB_TRANSITIONS.values():
        assert targets <= set(JobStatus)


def test_terminal_job_states_have_no_way_out() -> None:
    """Terminal job states lead nowhere; active ones lead somewhere; the two split all states."""
    assert set(JobStatus) == TERMINAL_JOB_STATES | ACTIVE_JOB_STATES
    assert not TERMINAL_JOB_STATES & ACTIVE_JOB_STATES
    for state in TERMINAL_JOB_STATES:
        assert JOB_TRANSITIONS[state] == frozenset(), state
    for state in ACTIVE_JOB_STATES:
        assert JOB_TRANSITIONS[state], state
    assert JobStatus.QUEUED in JOB_TRANSITIONS[JobStatus.RUNNING]  # retries go back to queued


def test_every_job_state_is_reachable_from_queued() -> None:
    """Walking the table from `queued` reaches every job state."""
    assert reachable(JOB_TRANSITIONS, JobStatus.QUEUED) == set(JobStatus)


def test_service_transitions_cover_every_state() -> None:
    """Every service state has an entry, every target is known, and each can move on."""
    assert set(SERVICE_TRANSITIONS) == set(ServiceState)
    for state, targets in SERVICE_TRANSITIONS.items():
        assert targets <= set(ServiceState)
        assert targets, f"{state} is a dead end"
        assert state not in targets


def test_every_service_state_is_reachable_from_stopped() -> None:
    """Walking the table from `stopped` reaches every service state, and each can stop again."""
    assert reachable(SERVICE_TRANSITIONS, ServiceState.STOPPED) == set(ServiceState)
    for state in ServiceState:
        # A supervised service never gets stuck: from anywhere it can be started again.
        assert ServiceState.STARTING in reachable(SERVICE_TRANSITIONS, state)


# ---------------------------------------------------------------- CommandSpec


def test_merged_over_fills_unset_fields_and_merges_env() -> None:
    """The override's set fields win, unset ones come from the base, env merges per key."""
    base = CommandSpec(
        command=["deploy"],
        env={"A": "1", "B": "2"},
        cwd="/srv",
        timeout_s=30.0,
        kill_timeout_s=3.0,
        retries=2,
    )
    override = CommandSpec(env={"B": "9", "C": "3"}, timeout_s=5.0)
    merged = override.merged_over(base)
    assert merged == CommandSpec(
        command=["deploy"],
        env={"A": "1", "B": "9", "C": "3"},
        cwd="/srv",
        timeout_s=5.0,
        kill_timeout_s=3.0,
        retries=2,
    )
    assert base.env == {"A": "1", "B": "2"}  # the base is not mutated
    assert CommandSpec().merged_over(CommandSpec(command=["x"])).env is None


def test_merged_over_own_script_replaces_base_command() -> None:
    """An override with its own script runs that script, not the base's command."""
    base = CommandSpec(command=["base"], retries=1)
    merged = CommandSpec(script="echo hi").merged_over(base)
    assert merged.command is None
    assert merged.script == "echo hi"
    assert merged.retries == 1
    zero = CommandSpec(retries=0, cwd="/").merged_over(CommandSpec(retries=5, cwd="/b"))
    assert (zero.retries, zero.cwd) == (0, "/")  # falsy values still override


def test_with_defaults() -> None:
    """with_defaults fills retries, kill timeout and (for scripts only) the interpreter."""
    command = CommandSpec(command=["ls"]).with_defaults()
    assert command == CommandSpec(command=["ls"], retries=0, kill_timeout_s=DEFAULT_KILL_TIMEOUT_S)
    script = CommandSpec(script="echo").with_defaults()
    assert script.interpreter == DEFAULT_INTERPRETER
    assert script.retries == 0
    kept = CommandSpec(script="print(1)", interpreter=["python3"], retries=3, kill_timeout_s=1.0)
    assert kept.with_defaults() == kept
    assert CommandSpec(command=["ls"], retries=2).with_defaults().retries == 2


def test_argv() -> None:
    """argv is the command, or the interpreter running the script with -c."""
    assert CommandSpec(command=["echo", "a b"]).argv() == ["echo", "a b"]
    assert CommandSpec(script="echo hi").argv() == ["/bin/sh", "-c", "echo hi"]
    assert CommandSpec(script="print(1)", interpreter=["python3", "-u"]).argv() == [
        "python3",
        "-u",
        "-c",
        "print(1)",
    ]
    with pytest.raises(ValueError):
        CommandSpec().argv()


def test_argv_is_a_copy() -> None:
    """Changing the returned argv does not change the spec."""
    spec = CommandSpec(command=["a"])
    spec.argv().append("b")
    assert spec.command == ["a"]


@pytest.mark.parametrize(
    "spec",
    [
        CommandSpec(),
        CommandSpec(command=["a"]),
        CommandSpec(command=["a"], io_weight=5),
        CommandSpec(script="echo"),
        CommandSpec(command=["a", "b"], env={"K": "V"}, cwd="/tmp", timeout_s=1.5, retries=0),
        CommandSpec(
            script="echo", interpreter=["/bin/bash"], kill_timeout_s=0.0, env={}, retries=4
        ),
    ],
)
def test_to_dict_from_dict_round_trip(spec: CommandSpec) -> None:
    """from_dict(to_dict()) gives back the same spec; unset fields are left out of the dict."""
    data = spec.to_dict()
    assert None not in data.values()
    assert CommandSpec.from_dict(data) == spec


def test_to_dict_keeps_falsy_values() -> None:
    """Zero, empty strings and empty maps are values, not 'unset'."""
    assert CommandSpec(retries=0, env={}, kill_timeout_s=0.0).to_dict() == {
        "env": {},
        "kill_timeout_s": 0.0,
        "retries": 0,
    }


# ---------------------------------------------------------------- parse_job_request


class _Text(str):
    """A str that is not exactly a str (the fast path leaves it to the full one)."""


@pytest.mark.parametrize(
    "raw",
    [
        {"command": ["/bin/true"]},
        {"command": ["echo", "ü", 'q"\\', ""]},
        {"command": []},
        {"command": "echo"},
        {"command": ["a\0b"]},
        {"command": ["a", 1]},
        {"command": [_Text("a")]},
        {"command": None},
        {"script": "echo"},
        {"command": ["a"], "tags": ["t"]},
        {"command": ["a"], "cwd": "/"},
        {"commands": ["a"]},
        {},
        ["a"],
        None,
    ],
)
def test_bare_job_request_is_job_request_from_or_leaves_it(raw: Any) -> None:
    """The fast path of a batch's bare items gives what the full reading gives, or None
    (then the full reading runs: every other item, and every bad one)."""
    bare = bare_job_request(raw)
    try:
        full: JobRequest | None = job_request_from(raw, "jobs[0]")
    except InvalidParams:
        full = None
    if bare is not None:
        assert bare == full
        assert bare.spec.to_dict() == raw
    is_bare = isinstance(raw, dict) and raw.keys() == {"command"}
    assert (bare is not None) == (is_bare and full is not None and type(raw["command"][0]) is str)


@pytest.mark.parametrize("slice_size", [None, 1, 2])
def test_bare_job_requests_reads_a_batch_of_bare_commands_or_leaves_it(
    monkeypatch: pytest.MonkeyPatch, slice_size: int | None
) -> None:
    """The whole-batch check (slice by slice) gives each item's `bare_job_request`, or None
    as soon as one item would not have one (each item is then read on its own)."""
    if slice_size is not None:
        monkeypatch.setattr(model, "_BARE_SLICE", slice_size)
    good: list[Any] = [{"command": ["/bin/true"]}, {"command": ["echo", "ü", ""]}]
    assert bare_job_requests(good) == [bare_job_request(item) for item in good]
    bad_ones: list[Any] = [
        {"command": []},
        {"command": "echo"},
        {"command": ["a\0b"]},
        {"command": ["a", 1]},
        {"command": [_Text("a")]},
        {"command": None},
        {"script": "echo"},
        {"command": ["a"], "tags": ["t"]},
        {},
        ["a"],
        None,
    ]
    for bad in bad_ones:
        for at in range(len(good) + 1):
            assert bare_job_requests([*good[:at], bad, *good[at:]]) is None, (bad, at)


def parse_error(raw: dict[str, Any], prefix: str = "", in_run: bool = False) -> InvalidParams:
    """The InvalidParams that parsing `raw` as a job raises."""
    with pytest.raises(InvalidParams) as info:
        parse_job_request(Params(raw, prefix), in_run=in_run)
    return info.value


def test_parse_job_request_full() -> None:
    """A complete job request is read into its spec and fields."""
    req = parse_job_request(
        Params(
            {
                "script": "make test",
                "interpreter": "/bin/bash",
                "env": {"CI": "1"},
                "cwd": "/src",
                "timeout_s": 60,
                "kill_timeout_s": 2,
                "retries": 3,
                "tags": ["ci"],
                "priority": -5,
                "group": "builders",
                "dedup_key": "main",
            }
        )
    )
    assert req == JobRequest(
        spec=CommandSpec(
            script="make test",
            interpreter=["/bin/bash"],
            env={"CI": "1"},
            cwd="/src",
            timeout_s=60.0,
            kill_timeout_s=2.0,
            retries=3,
        ),
        tags=["ci"],
        priority=-5,
        group="builders",
        dedup_key="main",
    )


def test_parse_job_request_in_run_and_action() -> None:
    """In a run a job needs a key and may depend on others; an action job carries overrides."""
    req = parse_job_request(
        Params({"action": "deploy", "key": "d", "depends_on": ["b"], "env": {"X": "1"}}),
        in_run=True,
    )
    assert (req.action, req.key, req.depends_on) == ("deploy", "d", ["b"])
    assert req.spec == CommandSpec(env={"X": "1"})
    err = parse_error({"command": ["x"]}, in_run=True)
    assert (err.field, err.problem) == ("key", "is required")
    err = parse_error({"command": ["x"], "key": "k"})
    assert (err.field, err.problem) == ("key", "unknown field")


@pytest.mark.parametrize(
    ("raw", "field", "problem"),
    [
        ({"command": ["a"], "script": "b"}, "script", "give either command or script, not both"),
        ({"command": ["a"], "interpreter": "python3"}, "interpreter", "only goes with script"),
        ({"interpreter": ["python3"]}, "interpreter", "only goes with script"),
        ({"command": ["a"], "cwd": "rel/dir"}, "cwd", "must be an absolute path"),
        ({}, "command", "one of command or script is required"),
        ({"tags": ["t"]}, "command", "one of command or script is required"),
        (
            {"action": "deploy", "command": ["a"]},
            "action",
            "give either action or command/script, not both",
        ),
        (
            {"action": "deploy", "script": "a"},
            "action",
            "give either action or command/script, not both",
        ),
        ({"command": []}, "command", "must not be empty"),
        ({"command": ["a"], "timeout_s": 0}, "timeout_s", "must be a number > 0"),
        ({"command": ["a"], "retries": -1}, "retries", "must be >= 0"),
        ({"command": ["a"], "colour": "red"}, "colour", "unknown field"),
    ],
)
def test_parse_job_request_errors(raw: dict[str, Any], field: str, problem: str) -> None:
    """Each malformed request is rejected naming the field and the problem."""
    err = parse_error(raw)
    assert (err.field, err.problem) == (field, problem)


def test_parse_job_request_errors_carry_the_prefix() -> None:
    """A job inside run.submit's list reports its index in the field path."""
    err = parse_error({"key": "k", "command": ["a"], "cwd": "x"}, prefix="jobs[3]", in_run=True)
    assert err.field == "jobs[3].cwd"


# ---------------------------------------------------------------- check_run_graph


def graph(*jobs: tuple[str, list[str]]) -> list[JobRequest]:
    """Jobs of a run from (key, depends_on) pairs."""
    return [JobRequest(spec=CommandSpec(command=["true"]), key=k, depends_on=d) for k, d in jobs]


def graph_error(jobs: list[JobRequest]) -> InvalidParams:
    """The InvalidParams that check_run_graph raises for `jobs`."""
    with pytest.raises(InvalidParams) as info:
        check_run_graph(jobs)
    return info.value


def test_run_graph_duplicate_key() -> None:
    """A key used twice is rejected at its second use."""
    err = graph_error(graph(("a", []), ("b", []), ("a", [])))
    assert err.field == "jobs[2].key"
    assert "duplicate" in err.problem and "'a'" in err.problem


def test_run_graph_unknown_dependency() -> None:
    """A dependency on a key not in the run is rejected with its index."""
    err = graph_error(graph(("a", []), ("b", ["a", "zz"])))
    assert err.field == "jobs[1].depends_on[1]"
    assert "'zz'" in err.problem


def test_run_graph_self_dependency() -> None:
    """A job depending on itself is rejected."""
    err = graph_error(graph(("a", []), ("b", ["b"])))
    assert (err.field, err.problem) == ("jobs[1].depends_on[0]", "a job cannot depend on itself")


def test_run_graph_three_cycle() -> None:
    """a → b → c → a is a cycle, named by its keys; an unrelated job is not named."""
    err = graph_error(graph(("free", []), ("a", ["c"]), ("b", ["a"]), ("c", ["b"])))
    assert err.field == "jobs"
    assert "cycle" in err.problem
    for key in ("a", "b", "c"):
        assert key in err.problem.split("keys ", 1)[1].split(", ")
    assert "free" not in err.problem


def test_run_graph_valid_shapes() -> None:
    """A diamond, repeated dependencies, independent jobs and an empty run all pass."""
    check_run_graph(graph(("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])))
    check_run_graph(graph(("a", []), ("b", ["a", "a"])))
    check_run_graph(graph(("x", []), ("y", [])))
    check_run_graph([])
    chain: list[tuple[str, list[str]]] = [("j0", [])]
    chain += [(f"j{i}", [f"j{i - 1}"]) for i in range(1, 500)]
    check_run_graph(graph(*chain))


# ---------------------------------------------------------------- parse_service_spec

SERVICE_DEFAULTS: dict[str, Any] = {
    "restart": "on-failure",
    "start_secs": 1.0,
    "restart_delay_s": 1.0,
    "restart_delay_max_s": 60.0,
    "start_limit": 5,
    "start_window_s": 60.0,
    "stop_signal": "TERM",
    "stop_timeout_s": 10.0,
    "oneshot": False,
    "autostart": False,
    "requires": [],
    "after": [],
    "tags": [],
    "restart_on_unhealthy": False,
    "type": "simple",
}


def service_error(raw: dict[str, Any]) -> InvalidParams:
    """The InvalidParams that parsing `raw` as a service (then finishing) raises."""
    with pytest.raises(InvalidParams) as info:
        p = Params(raw)
        parse_service_spec(p)
        p.finish()
    return info.value


def test_service_spec_defaults() -> None:
    """A bare command gets every documented default and no health check."""
    p = Params({"command": ["srv"]})
    spec = parse_service_spec(p)
    p.finish()
    assert spec == {"command": ["srv"], **SERVICE_DEFAULTS}


def test_service_spec_overrides() -> None:
    """Given options replace the defaults."""
    spec = parse_service_spec(
        Params(
            {
                "script": "exec srv",
                "restart": "always",
                "stop_signal": "INT",
                "start_limit": 0,
                "requires": ["db"],
                "after": ["db", "cache"],
                "autostart": True,
                "env": {"PORT": "80"},
            }
        )
    )
    assert spec["script"] == "exec srv"
    assert spec["env"] == {"PORT": "80"}
    assert (spec["restart"], spec["stop_signal"], spec["start_limit"]) == ("always", "INT", 0)
    assert (spec["requires"], spec["after"], spec["autostart"]) == (["db"], ["db", "cache"], True)
    assert "retries" not in spec


def test_service_spec_health_checks() -> None:
    """Each kind of health check is read with its defaults or given timings."""
    spec = parse_service_spec(Params({"command": ["srv"], "health": {"exec": ["check", "-q"]}}))
    assert spec["health"] == {
        "exec": ["check", "-q"],
        "interval_s": 10.0,
        "timeout_s": 5.0,
        "retries": 3,
    }
    spec = parse_service_spec(
        Params(
            {
                "command": ["srv"],
                "health": {"tcp": "127.0.0.1:8080", "interval_s": 2, "retries": 1},
            }
        )
    )
    assert spec["health"] == {
        "tcp": "127.0.0.1:8080",
        "interval_s": 2.0,
        "timeout_s": 5.0,
        "retries": 1,
    }
    http = parse_service_spec(Params({"command": ["s"], "health": {"http": "http://x/h"}}))
    assert http["health"]["http"] == "http://x/h"


@pytest.mark.parametrize(
    ("raw", "field", "problem"),
    [
        ({}, "command", "one of command or script is required"),
        (
            {"command": ["s"], "retries": 2},
            "retries",
            "services restart by policy; use restart/start_limit",
        ),
        (
            {"command": ["s"], "restart": "sometimes"},
            "restart",
            "must be one of always, on-failure, never",
        ),
        ({"command": ["s"], "stop_signal": "SIGTERM"}, "stop_signal", None),
        ({"command": ["s"], "start_window_s": 0}, "start_window_s", "must be a number > 0"),
        ({"command": ["s"], "requires": ["bad name"]}, "requires[0]", "is not a valid name"),
        (
            {"command": ["s"], "health": {}},
            "health.exec",
            "give exactly one of exec, tcp, http, unix",
        ),
        (
            {"command": ["s"], "health": {"exec": ["c"], "tcp": "h:1"}},
            "health.exec",
            "give exactly one of exec, tcp, http, unix",
        ),
        (
            {"command": ["s"], "health": {"exec": ["c"], "retries": 0}},
            "health.retries",
            "must be >= 1",
        ),
        (
            {"command": ["s"], "health": {"exec": ["c"], "every": 1}},
            "health.every",
            "unknown field",
        ),
        ({"command": ["s"], "health": "tcp"}, "health", "must be an object"),
        ({"command": ["s"], "restrat": "always"}, "restrat", "unknown field"),
    ],
)
def test_service_spec_errors(raw: dict[str, Any], field: str, problem: str | None) -> None:
    """Each malformed service definition is rejected naming the field."""
    err = service_error(raw)
    assert err.field == field
    if problem is not None:
        assert err.problem == problem


# -- dependency graphs: deep chains and cycles (a stack file can declare thousands) --------


def _order_recursive(graph: dict[str, list[str]], wanted: list[str]) -> list[str]:
    """The first, recursive dependency_order: the reference for the order it gives."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in seen or name in path:
            return
        for dep in sorted(graph.get(name, [])):
            visit(dep, (*path, name))
        seen.add(name)
        order.append(name)

    for name in sorted(wanted):
        visit(name, ())
    return order


def _is_cycle(graph: dict[str, list[str]], cycle: list[str]) -> bool:
    return (
        len(cycle) >= 2
        and cycle[0] == cycle[-1]
        and all(b in graph.get(a, []) for a, b in itertools.pairwise(cycle))
    )


def test_a_dependency_chain_deeper_than_the_stack_is_ordered_and_checked() -> None:
    # s0 requires s1 requires ... s4999: a recursive walk ran out of stack at ~1000.
    n = 5000
    graph = {f"s{i}": [f"s{i + 1}"] if i + 1 < n else [] for i in range(n)}
    order = dependency_order(graph, ["s0"])
    assert order == [f"s{i}" for i in reversed(range(n))]
    assert find_cycle(graph) is None
    graph[f"s{n - 1}"] = ["s0"]
    cycle = find_cycle(graph)
    assert cycle is not None and _is_cycle(graph, cycle) and len(cycle) == n + 1
    assert len(dependency_order(graph, ["s0"])) == n  # bounded on a cycle too


@pytest.mark.parametrize("seed", range(200))
def test_dependency_order_and_find_cycle_on_random_graphs(seed: int) -> None:
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(rng.randint(1, 12))]
    graph = {
        n: rng.sample([*names, "missing"], rng.randint(0, min(3, len(names) + 1)))
        for n in names
        if rng.random() < 0.9
    }
    wanted = rng.sample(names, rng.randint(0, len(names)))
    assert dependency_order(graph, wanted) == _order_recursive(graph, wanted)
    cycle = find_cycle(graph)
    has_cycle = any(_order_reaches(graph, n, n) for n in graph)
    assert (cycle is not None) == has_cycle, (graph, cycle)
    if cycle is not None:
        assert _is_cycle(graph, cycle), (graph, cycle)


def _order_reaches(graph: dict[str, list[str]], start: str, goal: str) -> bool:
    todo, seen = list(graph.get(start, [])), set()
    while todo:
        n = todo.pop()
        if n == goal:
            return True
        if n not in seen:
            seen.add(n)
            todo.extend(graph.get(n, []))
    return False

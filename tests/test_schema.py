"""The OpenRPC document (rpc_schema/openrpc.json) held against the code it describes.

Everything here goes through real parts: the dispatch table, the handlers with
their real `Params`, a real store on a SQLite file, a real executor (paused, so
no job runs unless a test wants it) and supervisor, behind the real
`Dispatcher`. The examples of each method run against a database seeded once
per session and copied for each test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from hero_procd import __version__
from hero_procd.app import App
from hero_procd.config import Config
from hero_procd.daemon import load_openrpc
from hero_procd.engine.contain import ProcessGroupContainment
from hero_procd.engine.executor import Executor
from hero_procd.engine.janitor import Janitor
from hero_procd.engine.scheduler import Scheduler
from hero_procd.engine.supervisor import Supervisor
from hero_procd.errors import (
    ERROR_CODES,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    HeroError,
    InvalidParams,
)
from hero_procd.model import SIGNAL_NAMES, JobStatus, RunStatus, ServiceState
from hero_procd.params import Params
from hero_procd.rpc.dispatch import Dispatcher
from hero_procd.rpc.registry import load_methods
from hero_procd.rpc.schema_doc import load_document, main, method_params, render, resolve
from hero_procd.secretbox import KEY_BYTES, SecretBox
from hero_procd.store import Store

REPO = Path(__file__).resolve().parents[1]
DOC_PATH = REPO / "rpc_schema" / "openrpc.json"
DOC: dict[str, Any] = orjson.loads(DOC_PATH.read_bytes())
METHODS: dict[str, dict[str, Any]] = {m["name"]: m for m in DOC["methods"]}
METHOD_NAMES = sorted(METHODS)

# The state the examples of rpc_schema/openrpc.json run against. Ids follow the
# order: jobs 1-3 and run 1 run to completion and service `ticker` runs a little
# (its output is kept) and is stopped; then the executor is paused, so job 4 and
# run 2 (job 5) stay queued. Schedule `nightly` and secret `db-password` exist.
SEED_FINISHED: list[tuple[str, dict[str, Any]]] = [
    ("action.set", {"name": "build", "command": ["echo", "building"], "tags": ["ci"]}),
    ("job.submit", {"command": ["echo", "hello"], "tags": ["nightly"]}),
    (
        "run.submit",
        {
            "name": "release",
            "tags": ["release"],
            "jobs": [
                {"key": "build", "action": "build"},
                {"key": "test", "command": ["echo", "testing"], "depends_on": ["build"]},
            ],
        },
    ),
    (
        "service.define",
        {
            "name": "ticker",
            "script": "while true; do echo tick; sleep 0.05; done",
            "start_secs": 0.1,
            "stop_timeout_s": 2,
        },
    ),
]
SEED_QUEUED: list[tuple[str, dict[str, Any]]] = [
    ("job.submit", {"command": ["sleep", "60"], "tags": ["slow"], "group": "io"}),
    ("run.submit", {"name": "deploy", "jobs": [{"key": "push", "command": ["sleep", "60"]}]}),
    ("group.set", {"name": "io", "max_parallel": 2}),
    ("secret.set", {"name": "db-password", "value": "hunter2"}),
    (
        "schedule.set",
        {"name": "nightly", "cron": "0 3 * * *", "job": {"command": ["echo", "nightly"]}},
    ),
]

Call = tuple[str, dict[str, Any]]
_BROKEN_DEPENDENCY: list[Call] = [
    ("service.define", {"name": "broken", "command": ["false"], "restart": "never"}),
    ("service.define", {"name": "app", "command": ["sleep", "60"], "requires": ["broken"]}),
]

# Calls that make a method answer each documented application error, in the
# seeded state: the last call must fail with it. A method that documents one of
# these errors needs an entry here.
TRIGGERS: dict[str, dict[str, list[Call]]] = {
    "not_found": {
        "action.get": [("action.get", {"name": "missing"})],
        "job.submit": [("job.submit", {"action": "missing"})],
        "job.get": [("job.get", {"id": 999})],
        "job.cancel": [("job.cancel", {"id": 999})],
        "job.wait": [("job.wait", {"id": 999, "timeout_s": 0})],
        "job.logs": [("job.logs", {"id": 999})],
        "run.submit": [("run.submit", {"jobs": [{"key": "a", "action": "missing"}]})],
        "run.get": [("run.get", {"id": 999})],
        "run.wait": [("run.wait", {"id": 999, "timeout_s": 0})],
        "run.cancel": [("run.cancel", {"id": 999})],
        "service.get": [("service.get", {"name": "missing"})],
        "service.status": [("service.status", {"name": "missing"})],
        "service.start": [("service.start", {"name": "missing"})],
        "service.stop": [("service.stop", {"name": "missing"})],
        "service.restart": [("service.restart", {"name": "missing"})],
        "service.logs": [("service.logs", {"name": "missing"})],
        "service.events": [("service.events", {"name": "missing"})],
        "service.update": [("service.update", {"name": "missing", "restart": "always"})],
        "schedule.get": [("schedule.get", {"name": "missing"})],
        "schedule.pause": [("schedule.pause", {"name": "missing"})],
        "schedule.resume": [("schedule.resume", {"name": "missing"})],
        "schedule.trigger": [("schedule.trigger", {"name": "missing"})],
        "secret.get": [("secret.get", {"name": "missing"})],
    },
    "conflict": {
        # An object of another stack is not taken over.
        "stack.apply": [
            ("stack.apply", {"stack": "one", "groups": {"shared": {"max_parallel": 1}}}),
            ("stack.apply", {"stack": "two", "groups": {"shared": {"max_parallel": 1}}}),
        ],
        "job.submit": [("job.submit", {"command": ["true"], "dedup_key": "twice"})] * 2,
        "run.submit": [
            ("run.submit", {"jobs": [{"key": "a", "command": ["true"], "dedup_key": "twice"}]})
        ]
        * 2,
    },
    "invalid_state": {
        "job.cancel": [("job.cancel", {"id": 1})],
        "service.start": [*_BROKEN_DEPENDENCY, ("service.start", {"name": "app"})],
        "service.restart": [*_BROKEN_DEPENDENCY, ("service.restart", {"name": "app"})],
    },
}

# Values tried against every param: each one the document says is invalid must
# be refused with -32602 naming that param.
CANDIDATES: list[Any] = [
    {"no_such_field": 1},
    "bogus",
    "has space",
    "",
    12345,
    -1,
    0,
    1.5,
    True,
    False,
    [],
    [12345],
    ["has space"],
    2**31,
    -(2**31) - 1,
    "a" * 128,
    "a" * 129,
]

OPENRPC_METHOD_KEYS = {
    "name",
    "description",
    "summary",
    "tags",
    "paramStructure",
    "params",
    "result",
    "errors",
    "links",
    "examples",
    "deprecated",
}
CONTENT_DESCRIPTOR_KEYS = {"name", "description", "summary", "schema", "required", "deprecated"}


# -- the document as data -----------------------------------------------------------------
def params_of(method: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The method's content descriptors by param name."""
    return {p["name"]: p for p in method_params(DOC, method)}


def examples_of(method: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, params) of each example of the method."""
    out = []
    for pairing in method["examples"]:
        pairing = resolve(DOC, pairing)
        out.append((pairing["name"], {p["name"]: p["value"] for p in pairing["params"]}))
    return out


def validator(schema: Any) -> Any:
    """A draft-07 validator of `schema`; its `#/components/...` references resolve in DOC."""
    return jsonschema.Draft7Validator({"allOf": [schema], "components": DOC["components"]})


def schema_errors(value: Any, schema: Any) -> list[str]:
    """What makes `value` invalid against `schema`, plus fields the schema does not document."""
    found = [
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator(schema).iter_errors(value)
    ]
    return found + [f"{path}: not documented" for path in undocumented(value, schema)]


def _collect(schema: Any, props: dict[str, list[Any]], extra: list[Any]) -> None:
    """Gather the properties an object schema documents, through $ref and allOf/oneOf/anyOf."""
    schema = resolve(DOC, schema)
    if not isinstance(schema, dict):
        return
    for name, sub in schema.get("properties", {}).items():
        props.setdefault(name, []).append(sub)
    if "additionalProperties" in schema:
        extra.append(schema["additionalProperties"])
    for key in ("allOf", "oneOf", "anyOf"):
        for sub in schema.get(key, []):
            _collect(sub, props, extra)


def undocumented(value: Any, schema: Any, path: str = "$") -> list[str]:
    """Paths of object members in `value` that `schema` does not describe.

    An object schema with `properties` and no `additionalProperties` is closed
    here, so a result field missing from the document is caught.
    """
    props: dict[str, list[Any]] = {}
    extra: list[Any] = []
    _collect(schema, props, extra)
    resolved = resolve(DOC, schema)
    out: list[str] = []
    if isinstance(value, dict):
        is_open = any(e is True or isinstance(e, dict) for e in extra) or not props
        for key, item in value.items():
            if key in props:
                for sub in props[key]:
                    out += undocumented(item, sub, f"{path}.{key}")
            elif not is_open:
                out.append(f"{path}.{key}")
            else:
                for sub in extra:
                    if isinstance(sub, dict):
                        out += undocumented(item, sub, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(resolved, dict):
        items = [resolved.get("items")] if "items" in resolved else []
        for key in ("allOf", "oneOf", "anyOf"):
            for sub in resolved.get(key, []):
                sub = resolve(DOC, sub)
                if isinstance(sub, dict) and "items" in sub:
                    items.append(sub["items"])
        for i, item in enumerate(value):
            for sub in items:
                out += undocumented(item, sub, f"{path}[{i}]")
    return sorted(set(out))


def example_of(schema: Any) -> Any:
    """A value valid against `schema`: its first example, enum, default or const, else by type."""
    schema = resolve(DOC, schema)
    for key in ("examples", "enum"):
        if schema.get(key):
            return schema[key][0]
    for key in ("default", "const"):
        if key in schema:
            return schema[key]
    kind = schema.get("type")
    if kind == "array":
        return [example_of(schema.get("items", {}))]
    if kind == "object":
        return {}
    if kind is None:
        branches = schema.get("allOf") or schema.get("oneOf") or schema.get("anyOf")
        return example_of(branches[0]) if branches else None
    return {"string": "x", "integer": 1, "number": 1.0, "boolean": True}[kind]


def _vocabulary() -> dict[str, Any]:
    """Every param name the document uses, and every member of its closed objects."""
    vocabulary: dict[str, Any] = {}
    for m in DOC["methods"]:
        for p in method_params(DOC, m):
            vocabulary.setdefault(p["name"], example_of(p["schema"]))
    for schema in DOC["components"]["schemas"].values():
        if schema.get("additionalProperties") is False:
            for name, sub in schema["properties"].items():
                vocabulary.setdefault(name, example_of(sub))
    return vocabulary


VOCABULARY = _vocabulary()


def _enum_values(node: Any) -> list[Any]:
    """Every value of every enum in `node`."""
    if isinstance(node, list):
        return [v for item in node for v in _enum_values(item)]
    if not isinstance(node, dict):
        return []
    found = list(node.get("enum", [])) if isinstance(node.get("enum"), list) else []
    return found + [v for key, item in node.items() if key != "enum" for v in _enum_values(item)]


ENUM_VALUES = sorted({v for v in _enum_values(DOC) if isinstance(v, str)})


def names_field(field: Any, name: str) -> bool:
    """True if an error's `data.field` is `name` or a path inside it."""
    return isinstance(field, str) and (
        field == name or field.startswith(f"{name}.") or field.startswith(f"{name}[")
    )


# -- a seeded daemon without its socket -----------------------------------------------------
class Harness:
    """The real dispatcher over a seeded store, with a real (by default paused) executor."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.dispatcher = Dispatcher(app, load_methods())

    async def call(self, method: str, params: Any) -> dict[str, Any]:
        """The JSON-RPC response to one request."""
        request = {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
        raw = await self.dispatcher.handle(orjson.dumps(request))
        assert raw is not None
        answer: dict[str, Any] = orjson.loads(raw)
        return answer

    async def result(self, method: str, params: Any) -> Any:
        """The result of a call that must succeed."""
        answer = await self.call(method, params)
        assert "result" in answer, f"{method} {params}: {answer}"
        return answer["result"]

    async def error(self, method: str, params: Any) -> dict[str, Any]:
        """The error of a call that must fail."""
        answer = await self.call(method, params)
        assert "error" in answer, f"{method} {params} did not fail: {answer}"
        error: dict[str, Any] = answer["error"]
        return error


# One key for every harness of the session: a database reopened keeps its key.
SECRETS_KEY = os.urandom(KEY_BYTES)


@asynccontextmanager
async def open_harness(db_path: Path, *, paused: bool = True) -> AsyncIterator[Harness]:
    """Open the store at `db_path` with an executor; `paused` keeps queued jobs queued."""
    store = await Store.open(db_path, readers=2)
    await store.secrets.unlock(SecretBox(SECRETS_KEY, db_path.with_suffix(".key")))
    config = Config(socket_path=db_path.with_suffix(".sock"), db_path=db_path)
    app = App(config=config, store=store, openrpc=DOC)
    # The document is the same on every host: the harness takes every limit the document
    # allows, whatever controllers this host has (integration/test_containment.py holds
    # the daemon to refusing them where a controller is missing).
    app.containment = ProcessGroupContainment("schema tests")
    app.containment.controllers = ("memory", "cpu", "pids", "io")
    app.containment.follows_escapees = True  # and type forking
    executor = Executor(app)
    app.executor = executor
    await executor.start()
    if paused:
        await executor.stop_all_jobs()  # pauses claiming until resume()
    supervisor = Supervisor(app, executor.flusher, executor.spawner, executor.instance)
    app.supervisor = supervisor
    await supervisor.start()
    # The scheduler and the janitor answer their methods without their loops,
    # which the examples do not need (and nothing fires behind a test's back).
    app.scheduler = Scheduler(app)
    app.janitor = Janitor(app)
    try:
        yield Harness(app)
    finally:
        await supervisor.stop()
        await executor.stop()
        await store.close()


async def seed(db_path: Path) -> None:
    """Write the state the examples expect into a new database at `db_path`."""
    async with open_harness(db_path, paused=False) as h:
        for method, params in SEED_FINISHED:
            await h.result(method, params)
        for job_id in (1, 2, 3):
            job = await h.result("job.wait", {"id": job_id, "timeout_s": 30})
            assert job["status"] == "succeeded", job
        running = await h.result("service.start", {"name": "ticker", "wait_s": 30})
        assert running["state"] == "running", running
        for _ in range(200):
            logs = await h.result("service.logs", {"name": "ticker"})
            if len(logs["lines"]) >= 3:
                break
            await asyncio.sleep(0.01)
        await h.result("service.stop", {"name": "ticker"})
        await h.app.jobs.stop_all_jobs()
        for method, params in SEED_QUEUED:
            await h.result(method, params)


def copy_db(src: Path, dst: Path) -> Path:
    """Copy a closed database file (and any WAL left beside it)."""
    for suffix in ("", "-wal", "-shm"):
        part = src.with_name(src.name + suffix)
        if part.exists():
            shutil.copyfile(part, dst.with_name(dst.name + suffix))
    return dst


Body = Callable[[Harness], Awaitable[None]]
Runner = Callable[..., None]


@pytest.fixture(scope="session")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database seeded once per session; tests work on copies."""
    path = tmp_path_factory.mktemp("seed") / "seed.db"
    asyncio.run(seed(path))
    return path


@pytest.fixture
def run(seeded_db: Path, tmp_path: Path) -> Runner:
    """Run an async body against a fresh copy of the seeded database."""

    def runner(body: Body, *, paused: bool = True) -> None:
        db = copy_db(seeded_db, tmp_path / "t.db")

        async def main() -> None:
            async with open_harness(db, paused=paused) as h:
                await body(h)

        asyncio.run(main())

    return runner


# -- the document itself ----------------------------------------------------------------------
def test_document_is_openrpc_1_2_6_for_this_version() -> None:
    """The document declares OpenRPC 1.2.6 and the package's version."""
    assert DOC["openrpc"] == "1.2.6"
    assert DOC["info"]["title"] == "hero-procd"
    assert DOC["info"]["version"] == __version__


def test_package_and_daemon_serve_this_file() -> None:
    """The daemon's loader and schema_doc read this very file (the package links to it)."""
    assert load_openrpc() == DOC
    assert load_document() == DOC


def test_method_objects_have_the_openrpc_shape() -> None:
    """Method objects, their params, results and examples have the OpenRPC 1.2.6 shape."""
    assert len(METHODS) == len(DOC["methods"]), "method names must be unique"
    for m in DOC["methods"]:
        name = m["name"]
        assert {k for k in m if not k.startswith("x-")} <= OPENRPC_METHOD_KEYS, name
        assert m["paramStructure"] == "by-name", name
        summary = m.get("summary", "")
        assert summary and "\n" not in summary and len(summary) <= 120, name
        params = method_params(DOC, m)
        for p in params:
            assert {k for k in p if not k.startswith("x-")} <= CONTENT_DESCRIPTOR_KEYS, name
            assert p["name"] and "schema" in p, name
        assert len({p["name"] for p in params}) == len(params), f"{name}: duplicate params"
        result = resolve(DOC, m["result"])
        assert result["name"] and "schema" in result, name
        assert m["examples"], f"{name}: every method needs an example (they are run as tests)"
        for pairing in m["examples"]:
            pairing = resolve(DOC, pairing)
            assert pairing["name"] and "value" in pairing["result"], name
            unknown = {p["name"] for p in pairing["params"]} - {p["name"] for p in params}
            assert not unknown, f"{name} example {pairing['name']}: unknown params {unknown}"
        for group in m.get("x-exactly-one-of", []):
            assert group in params_of(m), f"{name}: x-exactly-one-of names {group}"


def test_every_reference_resolves() -> None:
    """Every $ref points at something in the document."""
    refs: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(DOC)
    assert len(refs) > 50
    for node in refs:
        assert resolve(DOC, node) is not node


def test_every_schema_is_valid_draft_07() -> None:
    """Every schema (components, params, results) is a valid draft-07 JSON Schema."""
    schemas = list(DOC["components"]["schemas"].values())
    for m in DOC["methods"]:
        schemas += [p["schema"] for p in method_params(DOC, m)]
        schemas.append(resolve(DOC, m["result"])["schema"])
    for schema in schemas:
        jsonschema.Draft7Validator.check_schema(schema)


# -- the document against the code -----------------------------------------------------------
def test_methods_are_the_dispatch_table() -> None:
    """The document lists exactly the methods of the dispatch table."""
    table = set(load_methods())
    assert set(METHODS) - table == set(), "documented but not served"
    assert table - set(METHODS) == set(), "served but not documented in rpc_schema/openrpc.json"


def test_error_codes_are_documented() -> None:
    """components.errors and x-error-codes hold the standard codes and hero_procd.errors'."""
    errors = DOC["components"]["errors"]
    for code, (name, _) in ERROR_CODES.items():
        assert errors[name]["code"] == code, name
    standard = {
        "parse_error": PARSE_ERROR,
        "invalid_request": INVALID_REQUEST,
        "method_not_found": METHOD_NOT_FOUND,
        "invalid_params": INVALID_PARAMS,
        "internal_error": INTERNAL_ERROR,
    }
    for name, code in standard.items():
        assert errors[name]["code"] == code, name
    for error in errors.values():
        assert set(error) <= {"code", "message", "data"}
        assert error["message"] and "\n" not in error["message"]
    codes = [e["code"] for e in errors.values()]
    assert len(set(codes)) == len(codes), "two errors share a code"
    assert DOC["x-error-codes"] == {name: e["code"] for name, e in errors.items()}


def test_every_method_documents_invalid_params() -> None:
    """Every method refuses unknown params, so every method lists invalid_params."""
    for m in DOC["methods"]:
        names = {resolve(DOC, e)["code"] for e in m["errors"]}
        assert INVALID_PARAMS in names, m["name"]


def test_enums_are_the_model_states() -> None:
    """Status enums and signal names are those of hero_procd.model."""
    schemas = DOC["components"]["schemas"]
    assert schemas["JobStatus"]["enum"] == [s.value for s in JobStatus]
    assert schemas["RunStatus"]["enum"] == [s.value for s in RunStatus]
    assert schemas["ServiceState"]["enum"] == [s.value for s in ServiceState]
    stop_signal = params_of(METHODS["service.define"])["stop_signal"]["schema"]
    assert stop_signal["enum"] == list(SIGNAL_NAMES)


def test_job_shapes_are_what_job_submit_takes() -> None:
    """JobRequest, JobDefaults and RunJob have job.submit's fields (RunJob plus key, depends_on)."""
    schemas = DOC["components"]["schemas"]
    request = set(schemas["JobRequest"]["properties"])
    assert request == set(params_of(METHODS["job.submit"]))
    assert set(schemas["JobDefaults"]["properties"]) == request
    assert set(schemas["RunJob"]["properties"]) == request | {"key", "depends_on"}


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_examples_run_and_results_match_the_schema(name: str, run: Runner) -> None:
    """Each example is valid, runs, and both its result and the actual one match the schema."""
    method = METHODS[name]
    params_doc = params_of(method)
    result_schema = resolve(DOC, method["result"])["schema"]
    pairings = [resolve(DOC, e) for e in method["examples"]]

    async def body(h: Harness) -> None:
        for pairing, (example, params) in zip(pairings, examples_of(method), strict=True):
            where = f"{name} example {example!r}"
            for key, value in params.items():
                assert not schema_errors(value, params_doc[key]["schema"]), f"{where}: {key}"
            missing = {k for k, p in params_doc.items() if p.get("required")} - set(params)
            assert not missing, f"{where}: lacks required {missing}"
            assert not schema_errors(pairing["result"]["value"], result_schema), where
            result = await h.result(name, params)
            assert not schema_errors(result, result_schema), f"{where}: the actual result"

    run(body)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_params_are_checked_as_documented(name: str, run: Runner) -> None:
    """The handler takes exactly the documented params, with the documented constraints."""
    method = METHODS[name]

    async def body(h: Harness) -> None:
        await check_handler_takes_only_documented_params(h, method)
        await check_bad_params_are_refused(h, method)
        await check_good_params_are_accepted(h, method)

    run(body)


async def check_handler_takes_only_documented_params(h: Harness, method: dict[str, Any]) -> None:
    """The handler reads every documented param, and refuses any other name."""
    name = method["name"]
    documented = set(params_of(method))
    handler = load_methods()[name]
    read: set[str] = set()
    for example, params in examples_of(method):
        p = Params(dict(params))
        try:
            await handler(h.app, p)
        except InvalidParams as exc:
            raise AssertionError(f"{name} example {example!r}: {exc}") from exc
        except HeroError:
            pass  # an earlier example changed the state (a second cancel, say)
        read |= p._seen
    assert documented - read == set(), f"{name}: documented params the handler never reads"
    # What the handler reads beyond the document, and every name the document
    # uses elsewhere, must be refused here.
    first = examples_of(method)[0][1]
    for extra in sorted((read | set(VOCABULARY)) - documented):
        error = await h.error(name, {**first, extra: VOCABULARY.get(extra, 1)})
        assert error["code"] == INVALID_PARAMS, (name, extra, error)


async def check_bad_params_are_refused(h: Harness, method: dict[str, Any]) -> None:
    """Params the schema calls invalid are refused with -32602 naming them."""
    name = method["name"]
    params_doc = params_of(method)
    examples = [params for _, params in examples_of(method)]
    group = set(method.get("x-exactly-one-of", []))

    async def refused(params: dict[str, Any], field: str | set[str], why: str) -> None:
        error = await h.error(name, params)
        assert error["code"] == INVALID_PARAMS, f"{name} {why}: {error}"
        got = error["data"]["field"]
        ok = got in field if isinstance(field, set) else names_field(got, field)
        assert ok, f"{name} {why}: field {got!r}, expected {field!r} ({error})"

    async def refused_item(params: dict[str, Any], path: str, per_item: bool) -> None:
        if not per_item:
            await refused(params, path, f"{path} in {params}")
            return
        # Items are checked one by one: a bad one is reported, the call succeeds.
        result = await h.result(name, params)
        messages = [f[1]["message"] for f in result["failed"] if f[0] == 0]
        assert any(path in m for m in messages), f"{name} {path}: {result}"

    error = await h.error(name, {**examples[0], "no_such_param": 1})
    assert error["code"] == INVALID_PARAMS
    assert error["data"] == {"field": "no_such_param", "problem": "unknown field"}
    for key, p in params_doc.items():
        base = next((e for e in examples if key in e), {})
        assert base, f"{name}.{key}: give it in an example"
        if p.get("required"):
            without = {k: v for k, v in base.items() if k != key}
            await refused(without, key, f"without required {key}")
        if key in group:
            base = {k: v for k, v in base.items() if k not in group}
        per_item = p.get("x-per-item-errors") is True
        any_items = validator({**resolve(DOC, p["schema"]), "items": {}})
        invalid = candidates(p["schema"])[0]
        assert invalid, f"{name}.{key}: its schema refuses nothing"
        for value in invalid:
            params = {**base, key: value}
            if per_item and any_items.is_valid(value):
                result = await h.result(name, params)
                assert [f[0] for f in result["failed"]] == list(range(len(value))), result
            else:
                await refused(params, key, f"{key}={value!r}")
        enum = enum_of(p["schema"])
        if enum is not None:
            # The daemon lists what it takes: the same values as the document.
            problem = (await h.error(name, {**base, key: "bogus"}))["data"]["problem"]
            if problem.startswith("must be one of "):
                taken = problem.removeprefix("must be one of ").split(", ")
                assert sorted(taken) == sorted(enum), f"{name}.{key}: {problem}"
        closed = closed_object(p["schema"])
        if closed is None:
            continue
        sample = next((e[key] for e in examples if key in e), None)
        assert sample is not None, f"{name}.{key}: give it in an example"
        exclusive = one_of_members(closed)
        others = sorted(set(VOCABULARY) - set(closed["properties"]))
        for member in ["no_such_field", *others]:
            value = VOCABULARY.get(member, 1)
            bad, path = with_member(sample, key, member, value, exclusive)
            await refused_item({**base, key: bad}, path, per_item)
        for member, sub in closed["properties"].items():
            for value in candidates(sub)[0]:
                bad, path = with_member(sample, key, member, value, exclusive)
                await refused_item({**base, key: bad}, path, per_item)
    if group:
        base = next(e for e in examples if len(group & set(e)) == 1)
        present = (group & set(base)).pop()
        stripped = {k: v for k, v in base.items() if k not in group}
        await refused(stripped, group, f"without any of {sorted(group)}")
        for other in sorted(group - {present}):
            both = {**base, other: example_of(params_doc[other]["schema"])}
            await refused(both, group, f"with {present} and {other}")


async def check_good_params_are_accepted(h: Harness, method: dict[str, Any]) -> None:
    """Params the schema calls valid, and optional params left out, are not refused."""
    name = method["name"]
    params_doc = params_of(method)
    examples = [params for _, params in examples_of(method)]
    group = set(method.get("x-exactly-one-of", []))

    async def accepted(params: dict[str, Any], path: str, per_item: bool) -> None:
        # Another error (not_found, say) is fine: only a refusal of `path` is not.
        answer = await h.call(name, params)
        error = answer.get("error")
        if error is not None:
            refused = error["code"] == INVALID_PARAMS and names_field(error["data"]["field"], path)
            assert not refused, f"{name} {path} in {params}: {error}"
        elif per_item:
            failed = answer["result"]["failed"]
            assert not any(path in f[1]["message"] for f in failed), f"{name} {path}: {failed}"

    for key, p in params_doc.items():
        base = next((e for e in examples if key in e), {})
        assert base, f"{name}.{key}: give it in an example"
        if not p.get("required") and key not in group:
            await accepted({k: v for k, v in base.items() if k != key}, key, False)
        # A param the daemon checks beyond its schema (a cron expression, say)
        # is only held to its examples.
        valid = [] if "x-validated" in p else candidates(p["schema"])[1]
        for value in valid:
            await accepted({**base, key: value}, key, False)
        closed = closed_object(p["schema"])
        if closed is None:
            continue
        per_item = p.get("x-per-item-errors") is True
        for member, sub in closed["properties"].items():
            if not is_scalar_schema(sub):
                continue  # strings and lists may be refused for what they name
            for value in candidates(sub)[1]:
                good, path = with_member(base[key], key, member, value, set())
                await accepted({**base, key: good}, path, per_item)


_CANDIDATES_CACHE: dict[bytes, tuple[list[Any], list[Any]]] = {}


def candidates(schema: Any) -> tuple[list[Any], list[Any]]:
    """(invalid, valid): CANDIDATES and the values at each bound of `schema`, split by it."""
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    if key not in _CANDIDATES_CACHE:
        check = validator(schema)
        values = [*CANDIDATES, *bound_values(schema)]
        _CANDIDATES_CACHE[key] = (
            [v for v in values if not check.is_valid(v)],
            [v for v in values if check.is_valid(v)],
        )
    return _CANDIDATES_CACHE[key]


def bound_values(schema: Any) -> list[Any]:
    """Values at and beside each bound of `schema`, and every enum value of the document."""
    schema = resolve(DOC, schema)
    out: list[Any] = []
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in schema:
            bound = schema[key]
            out += [bound - 1, bound - 0.5, bound, bound + 0.5, bound + 1]
    if "enum" in schema:
        out += ENUM_VALUES
    for key in ("allOf", "oneOf", "anyOf"):
        for sub in schema.get(key, []):
            out += bound_values(sub)
    return out


def enum_of(schema: Any) -> list[Any] | None:
    """The enum of `schema` (or of the first of its allOf that has one), if any."""
    schema = resolve(DOC, schema)
    if "enum" in schema:
        values: list[Any] = schema["enum"]
        return values
    for sub in schema.get("allOf", []):
        found = enum_of(sub)
        if found is not None:
            return found
    return None


def is_scalar_schema(schema: Any) -> bool:
    """True for a number, integer or boolean schema, or an enum."""
    schema = resolve(DOC, schema)
    kinds = schema.get("type")
    kinds = set(kinds) if isinstance(kinds, list) else {kinds}
    return "enum" in schema or bool(kinds & {"number", "integer", "boolean"})


def closed_object(schema: Any) -> dict[str, Any] | None:
    """The object schema refusing unknown members that `schema` is, or holds items of."""
    schema = resolve(DOC, schema)
    if schema.get("type") == "array":
        schema = resolve(DOC, schema.get("items", {}))
    if schema.get("type") == "object" and schema.get("additionalProperties") is False:
        result: dict[str, Any] = schema
        return result
    return None


def one_of_members(schema: dict[str, Any]) -> set[str]:
    """Members of which an object must have exactly one (its `oneOf` of `required`)."""
    return {name for branch in schema.get("oneOf", []) for name in branch.get("required", [])}


def with_member(
    sample: Any, key: str, member: str, value: Any, exclusive: set[str]
) -> tuple[Any, str]:
    """`sample` (an object, or a list of them: the first) with `member` set; its field path.

    Set one of the `exclusive` members and the others are dropped.
    """
    first = sample[0] if isinstance(sample, list) else sample
    changed = {k: v for k, v in first.items() if member not in exclusive or k not in exclusive}
    changed[member] = value
    if isinstance(sample, list):
        return [changed, *sample[1:]], f"{key}[0].{member}"
    return changed, f"{key}.{member}"


@pytest.mark.parametrize(
    ("error_name", "method_name"),
    [(error, method) for error, by_method in TRIGGERS.items() for method in by_method],
)
def test_documented_errors_are_raised(error_name: str, method_name: str, run: Runner) -> None:
    """Each documented application error is what the method answers to its trigger."""
    documented = {resolve(DOC, e)["code"] for e in METHODS[method_name]["errors"]}
    code = DOC["components"]["errors"][error_name]["code"]
    assert code in documented, f"{method_name} raises {error_name} but does not document it"
    calls = TRIGGERS[error_name][method_name]
    assert calls[-1][0] == method_name

    async def body(h: Harness) -> None:
        answers = [await h.call(method, params) for method, params in calls]
        assert answers[-1].get("error", {}).get("code") == code, answers

    run(body)


def test_documented_application_errors_have_a_trigger() -> None:
    """Every method listing not_found, conflict or invalid_state has a trigger in TRIGGERS."""
    for error_name, by_method in TRIGGERS.items():
        ref = {"$ref": f"#/components/errors/{error_name}"}
        documenting = {m["name"] for m in DOC["methods"] if ref in m["errors"]}
        assert documenting == set(by_method), (
            f"{error_name}: add the method to TRIGGERS or drop it from its errors"
        )


def test_each_health_check_kind_is_accepted(run: Runner) -> None:
    """Each kind of HealthCheck (exec, tcp, http, unix) with every option is taken."""
    health = DOC["components"]["schemas"]["HealthCheck"]
    kinds = [branch["required"][0] for branch in health["oneOf"]]
    assert kinds == ["exec", "tcp", "http", "unix"]

    async def body(h: Harness) -> None:
        for kind in kinds:
            check = {k: example_of(s) for k, s in health["properties"].items() if k not in kinds}
            check[kind] = example_of(health["properties"][kind])
            params = {"name": f"svc-{kind}", "command": ["true"], "health": check}
            assert not schema_errors(check, health)
            await h.result("service.define", params)

    run(body)


def test_documented_defaults_are_applied(run: Runner) -> None:
    """A minimal service.define shows the documented defaults."""
    params_doc = params_of(METHODS["service.define"])

    async def body(h: Harness) -> None:
        service = await h.result("service.define", {"name": "plain", "command": ["true"]})
        compared = 0
        for key, p in params_doc.items():
            default = resolve(DOC, p["schema"]).get("default", p["schema"].get("default"))
            if default is not None and key in service:
                assert service[key] == default, key
                compared += 1
        assert compared >= 10

    run(body)


def test_a_real_job_matches_the_documented_results(run: Runner) -> None:
    """A job that really runs gives job.wait and job.logs results matching the schema."""
    wait_schema = resolve(DOC, METHODS["job.wait"]["result"])["schema"]
    logs_schema = resolve(DOC, METHODS["job.logs"]["result"])["schema"]

    async def body(h: Harness) -> None:
        script = "echo out; echo err >&2; exit 3"
        submitted = await h.result("job.submit", {"script": script, "tags": ["real"]})
        job = await h.result("job.wait", {"id": submitted["id"], "timeout_s": 30})
        assert not schema_errors(job, wait_schema)
        assert (job["status"], job["exit_code"], job["done"]) == ("failed", 3, True)
        logs = await h.result("job.logs", {"id": submitted["id"]})
        assert not schema_errors(logs, logs_schema)
        assert {(line["stream"], line["text"]) for line in logs["lines"]} == {
            ("stdout", "out"),
            ("stderr", "err"),
        }

    run(body, paused=False)


# -- the Markdown tables ---------------------------------------------------------------------
README_TEMPLATE = """# A project

Intro.

<!-- methods:begin -->
stale
<!-- methods:end -->

## Errors

<!-- errors:begin -->
<!-- errors:end -->

The end.
"""


def test_schema_doc_fills_and_checks_a_readme(tmp_path: Path) -> None:
    """schema_doc fills both tables, is idempotent, and --check tells stale from fresh."""
    readme = tmp_path / "README.md"
    readme.write_text(README_TEMPLATE)
    assert main(["--check", str(readme)]) == 1
    assert readme.read_text() == README_TEMPLATE, "--check must not write"
    assert main([str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# A project\n\nIntro.\n\n<!-- methods:begin -->\n")
    assert text.endswith("<!-- errors:end -->\n\nThe end.\n")
    assert "stale" not in text
    for m in DOC["methods"]:
        assert f"| `{m['name']}` |" in text, m["name"]
    for name, error in DOC["components"]["errors"].items():
        assert f"| {error['code']} | `{name}` |" in text, name
    assert "`id`" in text and "`limit?`" in text
    assert main(["--check", str(readme)]) == 0
    assert render(text, DOC) == text

    readme.write_text(text.replace("`job.get`", "`job.fetch`"))
    assert main(["--check", str(readme)]) == 1
    readme.write_text("# no markers\n")
    assert main([str(readme)]) == 2
    readme.write_text("<!-- methods:begin -->\nno end\n")
    assert main([str(readme)]) == 2


def test_readmes_of_the_repo_are_in_sync() -> None:
    """rpc_schema/README.md (and README.md once it has the markers) are up to date."""
    files = [REPO / "rpc_schema" / "README.md"]
    top = REPO / "README.md"
    if top.exists() and "<!-- methods:begin -->" in top.read_text():
        files.append(top)
    argv = [sys.executable, "-m", "hero_procd.rpc.schema_doc", "--check", *map(str, files)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

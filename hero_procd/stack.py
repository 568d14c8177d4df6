"""Stacks: declared services, actions, schedules and groups, applied as one plan.

A stack file (README "Stack files") names a stack and declares objects in
tables whose keys are the params of `service.define`, `action.set`,
`schedule.set` and `group.set` (less `name`, which is the table's key). Each
table is read by the same code those methods use, so a stack file accepts
exactly what they accept and is refused with the same field paths.

`apply` computes a plan (create / update / unchanged / delete, field by
field) inside ONE store unit, against what that unit reads, and writes it in
the same unit. Applies are serialised whole (App.stack_lock), carry-out
included: each plans against what the one before did, deletes included.
Every object written carries its stack's name; a prune deletes only objects
of that stack that the file no longer declares.

After the commit, what the new definitions ask of running processes is
done: a service whose process-shaping fields changed (PROCESS_FIELDS) is
restarted if it was running, as its owner decides (Supervisor.refresh);
other fields (restart policy, health, tags…) take effect at its next start,
as with `service.define`. Services are deleted by a prune after the commit,
through their owners (which stop the process and write its last lines
first); a daemon that dies in between deletes them at the next apply with
prune.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hero_procd.errors import Conflict, HeroError, InvalidParams
from hero_procd.model import (
    PROCESS_FIELDS,
    dependency_order,
    find_cycle,
    now,
    parse_command_spec,
    parse_service_spec,
)
from hero_procd.params import NAME_RE, Params
from hero_procd.stackfile import KINDS, StackFileError, locate, parse
from hero_procd.store.stacks import State, Write, Writes

if TYPE_CHECKING:
    from hero_procd.app import App

log = logging.getLogger(__name__)

OVERLAP = ("skip", "queue", "allow")
KIND_NOUN = {"services": "service", "actions": "action", "schedules": "schedule", "groups": "group"}


@dataclass
class StackDoc:
    """One stack as declared: kind -> name -> definition (normalised as stored)."""

    stack: str
    objects: dict[str, dict[str, dict[str, Any]]]
    next_fire: dict[str, float | None] = field(default_factory=dict)
    source: str | None = None  # the file it came from (config dir), for messages
    text: str | None = None


def _prefixed(exc: InvalidParams, prefix: str) -> InvalidParams:
    where = f"{prefix}.{exc.field}" if exc.field else prefix
    return InvalidParams(where, exc.problem)


def _service(q: Params) -> dict[str, Any]:
    spec = parse_service_spec(q)
    q.finish()
    return spec


def _action(q: Params) -> dict[str, Any]:
    spec = parse_command_spec(q, require_command=True).to_dict()
    tags = q.text_list("tags") or []
    q.finish()
    return {**spec, "tags": tags}


def _schedule(q: Params) -> dict[str, Any]:
    from hero_procd.engine.scheduler import check_cron, check_target, check_timezone

    cron = q.req_text("cron")
    tz = q.text("timezone")
    job, run = q.raw("job"), q.raw("run")
    overlap = q.choice("overlap", OVERLAP, default="skip") or "skip"
    paused = bool(q.boolean("paused", default=False))
    q.finish()
    if (job is None) == (run is None):
        raise InvalidParams(q.path("job"), "give exactly one of job or run")
    target = {"job": job} if job is not None else {"run": run}
    try:
        check_cron(cron)
        check_timezone(tz)
        check_target(target)
    except InvalidParams as exc:
        raise _prefixed(exc, q.path("")) from exc
    out: dict[str, Any] = {"cron": cron}
    if tz is not None:
        out["timezone"] = tz
    return {**out, **target, "overlap": overlap, "paused": paused}


def _group(q: Params) -> dict[str, Any]:
    max_parallel = q.req_integer("max_parallel", minimum=1)
    q.finish()
    return {"max_parallel": max_parallel}


_READERS = {"services": _service, "actions": _action, "schedules": _schedule, "groups": _group}


def read_doc(p: Params) -> StackDoc:
    """Read `stack` and the four tables of a `stack.apply` (or a file); CPU only.

    Errors name the field as a path into the file (`services.web.restart`).
    """
    from hero_procd.engine.scheduler import next_fire

    stack = p.req_text("stack", name_like=True)
    objects: dict[str, dict[str, dict[str, Any]]] = {}
    for kind in KINDS:
        table = p.raw(kind)
        objects[kind] = {}
        if table is None:
            continue
        if not isinstance(table, Mapping):
            raise InvalidParams(p.path(kind), "must be a table of NAME = {fields}")
        for name, fields in table.items():
            where = p.path(f"{kind}.{name}")
            if not isinstance(name, str) or not NAME_RE.fullmatch(name):
                raise InvalidParams(
                    where, "a name is 1-128 characters of letters, digits and _.@:- (not first)"
                )
            if not isinstance(fields, Mapping):
                raise InvalidParams(where, "must be a table of fields")
            objects[kind][name] = _READERS[kind](Params(fields, where))
    ts = now()
    fires = {
        name: None if d["paused"] else next_fire(d["cron"], d.get("timezone"), ts)
        for name, d in objects["schedules"].items()
    }
    return StackDoc(stack, objects, fires)


# A stack file larger than a request frame could not be sent by `hero-proc apply` either.
MAX_STACK_FILE = 16 * 1024 * 1024


def read_regular(path: Path) -> str:
    """The text of a regular file, else StackFileError: never blocks on a named pipe.

    Opened non-blocking and checked on the open descriptor: a FIFO named *.toml
    would otherwise hold the offload thread (and every call that offloads) until
    someone writes to it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StackFileError(str(path), None, None, "not a regular file")
        if info.st_size > MAX_STACK_FILE:
            raise StackFileError(str(path), None, None, "larger than 16 MiB")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_STACK_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_STACK_FILE:
        raise StackFileError(str(path), None, None, "larger than 16 MiB")
    return data.decode("utf-8")


def load_file(path: Path) -> StackDoc:
    """Read and check one stack file; StackFileError names file, line and field."""
    text = read_regular(path)
    doc = parse(text, str(path))
    try:
        stack = read_doc(Params(doc))
    except InvalidParams as exc:
        raise StackFileError(str(path), locate(text, exc.field), exc.field, exc.problem) from exc
    stack.source, stack.text = str(path), text
    return stack


def load_dir(folder: Path) -> list[StackDoc]:
    """Every `*.toml` of a config folder, all checked before any is applied.

    Hidden names (`.#web.toml`, emacs' lock, a dangling symlink; an editor's
    `.web.toml.tmp.toml`) are not stack files: they are skipped, as run-parts
    and systemd's drop-in folders skip them.
    """
    docs: list[StackDoc] = []
    seen: dict[str, str] = {}
    for path in sorted(folder.glob("*.toml")):
        if path.name.startswith("."):
            continue
        doc = load_file(path)
        if doc.stack in seen:
            raise StackFileError(
                str(path),
                locate(doc.text or "", "stack"),
                "stack",
                f"stack {doc.stack!r} is declared by {seen[doc.stack]} too",
            )
        seen[doc.stack] = str(path)
        docs.append(doc)
    return docs


def describe_error(docs: list[StackDoc], exc: HeroError) -> str:
    """An apply error as `file:line: field: problem` when a file declares the field."""
    data = exc.data or {}
    where = data.get("field")
    problem = data.get("problem") or exc.message
    if isinstance(exc, Conflict):
        problem = exc.message
    if isinstance(where, str):
        # Compared as paths, the longest name first: a name may hold dots (web and web.1).
        # A conflict with the stack that owns the object is the other file's doing.
        owner = data.get("stack") if isinstance(exc, Conflict) else None
        found = [
            (len(name), -i)
            for i, doc in enumerate(docs)
            if doc.source is not None and doc.stack != owner
            for kind, objects in doc.objects.items()
            for name in objects
            if where == f"{kind}.{name}" or where.startswith((f"{kind}.{name}.", f"{kind}.{name}["))
        ]
        if found:
            doc = docs[-max(found)[1]]
            line = locate(doc.text or "", where)
            return str(StackFileError(str(doc.source), line, where, str(problem)))
    return str(exc)


@dataclass
class Change:
    """What a plan does to one object."""

    stack: str
    kind: str
    name: str
    action: str  # create, update, unchanged, delete, orphan (not in the file, no prune)
    fields: list[dict[str, Any]] = field(default_factory=list)
    restart: bool = False
    started: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The change as stack.apply answers it."""
        out: dict[str, Any] = {
            "kind": KIND_NOUN[self.kind],
            "name": self.name,
            "action": self.action,
            "fields": self.fields,
        }
        if self.kind == "services":
            out["restart"] = self.restart
            out["started"] = self.started
        if self.error is not None:
            out["error"] = self.error
        return out


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Field by field: each field whose value differs, with both values."""
    return [
        {"field": k, "old": old.get(k), "new": new.get(k)}
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]


@dataclass
class Plan:
    """The plan of one or several stacks, computed and written in one unit."""

    docs: list[StackDoc]
    prune: bool
    dry_run: bool
    changes: list[Change] = field(default_factory=list)

    def compute(self, state: State) -> Plan:
        """Plan against `state` (runs inside the store unit: CPU only, no awaits)."""
        self.changes = []
        declared: dict[tuple[str, str], str] = {}
        for doc in self.docs:
            for kind in KINDS:
                for name, new in sorted(doc.objects[kind].items()):
                    key = (kind, name)
                    if key in declared:
                        raise Conflict(
                            f"{KIND_NOUN[kind]} {name} is declared by stacks "
                            f"{declared[key]} and {doc.stack}",
                            {"field": f"{kind}.{name}"},
                        )
                    declared[key] = doc.stack
                    current = state[kind].get(name)
                    if current is None:
                        fields = [
                            {"field": k, "old": None, "new": v} for k, v in sorted(new.items())
                        ]
                        self.changes.append(Change(doc.stack, kind, name, "create", fields))
                        continue
                    old, owner = current
                    if owner is not None and owner != doc.stack:
                        raise Conflict(
                            f"{KIND_NOUN[kind]} {name} belongs to stack {owner}",
                            {"field": f"{kind}.{name}", "stack": owner},
                        )
                    fields = diff(old, new)
                    if owner is None:  # made by hand: this stack adopts it
                        fields.append({"field": "stack", "old": None, "new": doc.stack})
                    action = "update" if fields else "unchanged"
                    self.changes.append(Change(doc.stack, kind, name, action, fields))
            for kind in KINDS:
                for name, (_, owner) in sorted(state[kind].items()):
                    if owner == doc.stack and name not in doc.objects[kind]:
                        action = "delete" if self.prune else "orphan"
                        self.changes.append(Change(doc.stack, kind, name, action))
        self._check_graph(state)
        return self

    def _check_graph(self, state: State) -> None:
        """No dependency cycle after the plan, and no service it keeps requiring one it
        deletes (deleting it would stop that service, which the plan says nothing of)."""
        specs = {name: spec for name, (spec, _) in state["services"].items()}
        doomed: set[str] = set()
        for c in self.changes:
            if c.kind != "services":
                continue
            if c.action == "delete":
                specs.pop(c.name, None)
                doomed.add(c.name)
            elif c.action in ("create", "update"):
                specs[c.name] = self._definition(c)
        declared = {c.name for c in self.changes if c.kind == "services" and c.action != "delete"}
        for name, spec in sorted(specs.items()):
            for req in spec.get("requires", []):
                if req not in doomed:
                    continue
                if name in declared:
                    raise InvalidParams(
                        f"services.{name}.requires", f"requires {req}, which this plan deletes"
                    )
                owner = state["services"][name][1]
                raise InvalidParams(
                    f"services.{req}",
                    f"required by service {name} ({f'stack {owner}' if owner else 'made by hand'}),"
                    " which would be stopped: change or delete it first",
                )
        graph = {n: [*s.get("requires", []), *s.get("after", [])] for n, s in specs.items()}
        cycle = find_cycle(graph)
        if cycle is not None:
            ours = [
                n for n in cycle if any(c.kind == "services" and c.name == n for c in self.changes)
            ]
            name = ours[0] if ours else cycle[0]
            raise InvalidParams(
                f"services.{name}.requires", f"dependency cycle: {' -> '.join(cycle)}"
            )

    def _definition(self, change: Change) -> dict[str, Any]:
        for doc in self.docs:
            if doc.stack == change.stack:
                return doc.objects[change.kind][change.name]
        raise KeyError(change.stack)  # pragma: no cover

    def writes(self) -> Writes:
        """The creates, updates and deletes the unit writes (service deletes come later)."""
        out = Writes()
        for c in self.changes:
            if c.action in ("create", "update"):
                fire = None
                if c.kind == "schedules":
                    fire = next(d.next_fire[c.name] for d in self.docs if d.stack == c.stack)
                out.items.append(Write(c.kind, c.name, c.stack, self._definition(c), fire))
            elif c.action == "delete" and c.kind != "services":
                out.items.append(Write(c.kind, c.name, c.stack, None))
        return out

    def result(self, stack: str) -> dict[str, Any]:
        """The plan of one stack as stack.apply answers it."""
        changes = [c for c in self.changes if c.stack == stack]
        summary = {a: 0 for a in ("create", "update", "unchanged", "delete", "orphan")}
        for c in changes:
            summary[c.action] += 1
        changed = any(c.action in ("create", "update", "delete") for c in changes)
        return {
            "stack": stack,
            "dry_run": self.dry_run,
            "prune": self.prune,
            "changed": changed,
            "summary": summary,
            "changes": [c.to_dict() for c in changes],
        }


def restart_wanted(change: Change) -> bool:
    """An updated service whose process-shaping fields changed."""
    return (
        change.kind == "services"
        and change.action == "update"
        and any(f["field"] in PROCESS_FIELDS for f in change.fields)
    )


async def apply(app: App, docs: list[StackDoc], *, prune: bool, dry_run: bool) -> Plan:
    """Plan and write `docs` in one unit, then restart, start and delete what it asks.

    One apply at a time, carry-out included: an apply that planned against a prune's
    commit must not see the pruned services deleted after it answered (it declared
    them "unchanged"; they would be gone).
    """
    plan = Plan(docs, prune, dry_run)
    async with app.stack_lock:
        await app.store.stacks.apply(plan.compute)
        if dry_run:
            sup = app.supervisor
            for c in plan.changes:
                if restart_wanted(c):
                    c.restart = sup is not None and sup.is_live(c.name)
            return plan
        await carry_out(app, plan)
    return plan


async def carry_out(app: App, plan: Plan) -> None:
    """After the commit: what the new definitions ask of processes and engines."""
    sup = app.supervisor
    doomed = [c.name for c in plan.changes if c.kind == "services" and c.action == "delete"]
    if doomed:
        graph = {s.name: list(s.spec.get("requires", [])) for s in await app.store.services.list()}
        # Dependents before what they require.
        for name in reversed(dependency_order(graph, doomed)):
            if name not in doomed:
                continue
            try:
                if sup is not None:
                    await sup.delete_service(name)
                else:
                    await app.store.services.delete(name)
            except HeroError as exc:
                _failed(plan, "services", name, exc)
    for c in plan.changes:
        if c.kind != "services" or sup is None:
            continue
        try:
            if restart_wanted(c):
                # The owner decides (see Supervisor.refresh): not from is_live here, which a
                # stop or a start queued meanwhile would make stale.
                c.restart = await sup.refresh(c.name)
            elif c.action == "create" and self_starting(plan, c):
                await sup.start_service(c.name)
                c.started = True
        except HeroError as exc:
            c.error = str(exc)
            log.warning(
                "stack: service action failed", extra={"service": c.name, "error": str(exc)}
            )
    executor = app.executor
    if executor is not None and any(c.kind == "groups" for c in plan.changes):
        executor.group_limits = await app.store.groups.all()
        executor.wake()
    if app.scheduler is not None and any(c.kind == "schedules" for c in plan.changes):
        app.scheduler.wake()


def self_starting(plan: Plan, change: Change) -> bool:
    """A created service declared with autostart = true starts at once."""
    return bool(plan._definition(change).get("autostart"))


def _failed(plan: Plan, kind: str, name: str, exc: HeroError) -> None:
    for c in plan.changes:
        if c.kind == kind and c.name == name:
            c.error = str(exc)
    log.warning("stack: delete failed", extra={"name": name, "error": str(exc)})


def log_plan(plan: Plan, source: str) -> None:
    """Each change of a plan as one log record (config dir at start and on SIGHUP)."""
    for c in plan.changes:
        if c.action == "unchanged":
            continue
        log.info(
            f"stack {c.stack}: {c.action} {KIND_NOUN[c.kind]} {c.name}",
            extra={
                "source": source,
                "fields": [f["field"] for f in c.fields],
                "restart": c.restart,
            },
        )
    unchanged = sum(1 for c in plan.changes if c.action == "unchanged")
    log.info(
        "stacks applied",
        extra={
            "source": source,
            "stacks": [d.stack for d in plan.docs],
            "changes": sum(1 for c in plan.changes if c.action != "unchanged"),
            "unchanged": unchanged,
        },
    )


# -- export --------------------------------------------------------------------------------


def _service_defaults() -> dict[str, Any]:
    defaults = parse_service_spec(Params({"command": ["true"]}))
    defaults.pop("command")
    return defaults


def _without_nulls(value: Any) -> Any:
    """`value` with null members of objects left out (TOML has no null)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def export_doc(state: State, stack: str | None, name: str) -> dict[str, Any]:
    """The objects of `stack` (None: those made by hand) as a stack file's document.

    Fields at their defaults are left out: reading them back gives the same
    definitions, so the file applies back to no change. TOML has no null: a
    null inside a schedule's job (sent by hand over RPC) is left out too.
    """
    defaults = {
        "services": _service_defaults(),
        "actions": {"tags": []},
        "schedules": {"overlap": "skip", "paused": False},
        "groups": {},
    }
    doc: dict[str, Any] = {"stack": name}
    for kind in KINDS:
        table: dict[str, Any] = {}
        for obj, (definition, owner) in sorted(state[kind].items()):
            if owner != stack:
                continue
            table[obj] = _without_nulls(
                {
                    k: v
                    for k, v in definition.items()
                    if not (k in defaults[kind] and defaults[kind][k] == v)
                }
            )
        if table:
            doc[kind] = table
    return doc

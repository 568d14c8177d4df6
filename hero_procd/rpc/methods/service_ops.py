"""service.update and the bulk verbs service.start_many / stop_many / restart_many."""

from __future__ import annotations

from typing import Any

from hero_procd.app import App
from hero_procd.errors import HeroError, InvalidParams, InvalidState
from hero_procd.model import PROCESS_FIELDS, dependency_order, find_cycle, parse_service_spec
from hero_procd.params import Params
from hero_procd.rpc.methods.services import check_own_node
from hero_procd.rpc.registry import rpc
from hero_procd.stack import diff

# What a command or a script replaces in a stored definition.
_COMMAND_FIELDS = ("command", "script", "interpreter")


@rpc("service.update")
async def service_update(app: App, p: Params) -> dict[str, Any]:
    """Change some fields of a service; restart it if it runs and its process changed."""
    name = p.req_text("name", name_like=True)
    fields = {k: v for k, v in p.take_all().items() if k != "name"}
    if not fields:
        raise InvalidParams(None, "give at least one field to change")

    def change(old: dict[str, Any], graph: dict[str, list[str]]) -> dict[str, Any]:
        merged = dict(old)
        if "command" in fields or "script" in fields:
            for key in _COMMAND_FIELDS:
                merged.pop(key, None)
        merged.update(fields)  # a field set to null goes back to its default
        q = Params(merged)
        spec = parse_service_spec(q)
        q.finish()
        app.check_limits(spec)  # -32602 naming a controller this host cannot use
        graph[name] = [*spec.get("requires", []), *spec.get("after", [])]
        cycle = find_cycle(graph)
        if cycle is not None:
            raise InvalidParams("requires", f"dependency cycle: {' -> '.join(cycle)}")
        return spec

    old, new = await app.store.stacks.update_service(name, change)
    changed = diff(old, new)
    restarted = False
    sup = app.supervisor
    if sup is not None and any(f["field"] in PROCESS_FIELDS for f in changed):
        # The owner decides, after any verb queued before: a stop served first leaves it
        # stopped, a start that read the old definition is restarted with the new one.
        restarted = await sup.refresh(name)
    service = (await app.store.services.get(name)).to_dict()
    return {**service, "changed": changed, "restarted": restarted}


async def _selected(app: App, p: Params) -> tuple[list[str], dict[str, list[str]]]:
    """The services a bulk verb names (all, a tag or names), in dependency order, and
    what each requires."""
    everything = p.boolean("all")
    tag = p.text("tag")
    names = p.text_list("names", non_empty=True, name_like=True)
    if everything is False:
        raise InvalidParams("all", "must be true (or left out)")
    if tag == "":
        raise InvalidParams("tag", "must not be empty")
    given = [k for k, v in (("all", everything), ("tag", tag), ("names", names)) if v is not None]
    if len(given) != 1:
        raise InvalidParams("all", "give exactly one of all (true), tag or names")
    services = await app.store.services.list()
    defined = {s.name for s in services}
    graph = {
        s.name: [d for d in [*s.spec.get("requires", []), *s.spec.get("after", [])] if d in defined]
        for s in services
    }
    # `all` and a tag select this node's services (another node's daemon runs its own).
    mine = [s for s in services if s.node in (None, app.config.node)]
    if everything:
        wanted = sorted(s.name for s in mine)
    elif tag is not None:
        wanted = sorted(s.name for s in mine if tag in s.spec.get("tags", []))
    else:
        assert names is not None
        wanted = list(dict.fromkeys(names))
    chosen = set(wanted)
    order = [n for n in dependency_order(graph, [w for w in wanted if w in defined]) if n in chosen]
    # Unknown names last: each is answered NotFound.
    requires = {s.name: list(s.spec.get("requires", [])) for s in services}
    return order + [n for n in wanted if n not in defined], requires


async def _bulk(app: App, p: Params, verb: str) -> dict[str, Any]:
    wait_s = 0.0 if verb == "stop" else p.number("wait_s", default=0.0, minimum=0) or 0.0
    wait_s = min(wait_s, 600.0)
    names, requires = await _selected(app, p)
    p.finish()
    if verb == "stop":
        names.reverse()  # dependents before what they require
        return {"services": await _stop_all(app, names)}
    sup = app.services
    out: list[dict[str, Any]] = []
    failed: set[str] = set()
    for name in names:
        entry: dict[str, Any] = {"name": name}
        try:
            await check_own_node(app, name)  # another node's, by name: refused
            # A service whose requirement failed in this call is not tried: its start
            # would wait (30 s and more) for a requirement known not to run.
            down = [r for r in requires.get(name, []) if r in failed]
            if down:
                raise InvalidState(
                    f"not started: it requires {down[0]}, which did not start", {"name": name}
                )
            if verb == "start":
                await sup.start_service(name, wait_s=wait_s)
            else:
                await sup.restart_service(name, wait_s=wait_s)
            status = await app.store.services.status(name)
            up = status["state"] == "running" or (
                status["state"] == "exited" and status["exit_code"] == 0
            )
            if wait_s > 0 and not up:
                # As `service start NAME --wait`: not up in time is a failure.
                raise InvalidState(
                    f"not running after {wait_s:g}s (state {status['state']})",
                    {"name": name, "state": status["state"]},
                )
            entry.update(ok=True, state=status["state"], pid=status["pid"])
        except HeroError as exc:
            failed.add(name)
            entry.update(ok=False, error={"code": exc.code, "message": str(exc)})
        out.append(entry)
    return {"services": out}


async def _stop_all(app: App, names: list[str]) -> list[dict[str, Any]]:
    """Stop `names` (dependents first) in one pass of the supervisor; one entry each."""
    errors: dict[str, HeroError] = {}
    mine: list[str] = []
    for name in names:
        try:
            await check_own_node(app, name)  # another node's, by name: refused
            mine.append(name)
        except HeroError as exc:
            errors[name] = exc
    errors.update(await app.services.stop_services(mine))
    out: list[dict[str, Any]] = []
    for name in names:
        entry: dict[str, Any] = {"name": name}
        failure = errors.get(name)
        if failure is None:
            try:
                status = await app.store.services.status(name)
                entry.update(ok=True, state=status["state"], pid=status["pid"])
            except HeroError as gone:  # deleted meanwhile
                failure = gone
        if failure is not None:
            entry.update(ok=False, error={"code": failure.code, "message": str(failure)})
        out.append(entry)
    return out


@rpc("service.start_many")
async def service_start_many(app: App, p: Params) -> dict[str, Any]:
    """Start every service, a tag's or named ones, requirements first; one answer each."""
    return await _bulk(app, p, "start")


@rpc("service.stop_many")
async def service_stop_many(app: App, p: Params) -> dict[str, Any]:
    """Stop every service, a tag's or named ones, dependents first; one answer each."""
    return await _bulk(app, p, "stop")


@rpc("service.restart_many")
async def service_restart_many(app: App, p: Params) -> dict[str, Any]:
    """Restart every service, a tag's or named ones, requirements first; one answer each."""
    return await _bulk(app, p, "restart")

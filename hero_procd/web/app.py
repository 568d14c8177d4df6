"""The dashboard: routes, auth checks, pages (Jinja2), actions, /rpc, /metrics and /events.

Pages are rendered on the server from the same handlers the RPC methods
use, so the dashboard shows what `hero-proc` shows. htmx (vendored under
static/) turns buttons into POSTs and re-fetches a page's live region when
its Server-Sent Event says that part changed; log lines arrive as HTML in
the events themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from html import escape
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import jinja2
import orjson

from hero_procd.app import App
from hero_procd.errors import HeroError, NotFound
from hero_procd.model import JobStatus
from hero_procd.offload import offload
from hero_procd.params import Params
from hero_procd.rpc.dispatch import Dispatcher
from hero_procd.rpc.registry import load_methods
from hero_procd.store.dashboard import DashboardApi
from hero_procd.web import graph
from hero_procd.web.auth import Guard
from hero_procd.web.feed import TOPICS
from hero_procd.web.http import Request, Response, Streamed

log = logging.getLogger(__name__)

PAGE_SIZE = 50
LOG_TAIL = 500
HEARTBEAT_S = 20.0
LOG_EVENT_BYTES = 32 * 1024  # of line text per `log` event (HTML-escaped: up to 6x)
_STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_TEXT = "text/plain; charset=utf-8"
_SERVICE_VERBS = ("start", "stop", "restart")
_SCHEDULE_VERBS = ("pause", "resume", "trigger")


def _when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def log_html(rows: Sequence[Sequence[Any]]) -> str:
    """Log rows (…, seq, stream, ts, text) as one line of HTML (an SSE data line)."""
    out = []
    for row in rows:
        seq, stream, text = row[2], row[3], str(row[5])
        text = text.replace("\r", "").replace("\n", " ")
        out.append(
            f'<div class="line {escape(str(stream))}" data-seq="{int(seq)}">'
            f'<span class="seq">{int(seq)}</span>{escape(text)}</div>'
        )
    return "".join(out)


def log_events(rows: Sequence[Sequence[Any]]) -> Iterator[bytes]:
    """Log rows as `log` events of at most about LOG_EVENT_BYTES of text each, so that
    a stream writes (and waits for its reader) a piece at a time, never a whole tail."""
    start, size = 0, 0
    for i, row in enumerate(rows):
        size += len(row[5])
        if size >= LOG_EVENT_BYTES or i == len(rows) - 1:
            piece = rows[start : i + 1]
            yield _sse("log", log_html(piece), int(piece[-1][2]))
            start, size = i + 1, 0


def _sse(event: str, data: str, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n".encode()


class Dashboard:
    """Answers every request of the browser listener."""

    def __init__(self, app: App, dispatcher: Dispatcher, guard: Guard) -> None:
        self.app = app
        self.dispatcher = dispatcher
        self.guard = guard
        self.reads = DashboardApi(app.store.pool)
        self.methods = {name: app.observed(name, fn) for name, fn in load_methods().items()}
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("hero_procd.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters.update(when=_when, duration=_duration, size=_size)
        self.env.globals.update(csrf=guard.csrf_value, topics=TOPICS)
        self.static: dict[str, tuple[bytes, str]] = {}

    async def load_static(self) -> None:
        """Read the vendored files once (off the loop)."""

        def read() -> dict[str, tuple[bytes, str]]:
            out = {}
            for item in resources.files("hero_procd.web").joinpath("static").iterdir():
                suffix = "." + item.name.rsplit(".", 1)[-1]
                if suffix in _STATIC_TYPES:
                    out[item.name] = (item.read_bytes(), _STATIC_TYPES[suffix])
            return out

        self.static = await asyncio.to_thread(read)

    async def call(self, method: str, **params: Any) -> Any:
        """An RPC method, in process (counted in the metrics like any call)."""
        return await self.methods[method](self.app, Params(params))

    async def render(self, template: str, **ctx: Any) -> Response:
        """A page, rendered off the event loop."""
        tmpl = self.env.get_template(template)
        body = await offload(lambda: tmpl.render(**ctx).encode())
        return Response(200, body)

    # -- the front door -------------------------------------------------------
    async def handle(self, req: Request) -> Response | Streamed:
        """Check Host, then auth (and CSRF for POST), then route."""
        if not self.guard.host_ok(req.headers.get(b"host")):
            return Response(403, b"403 Forbidden: unknown Host\n", _TEXT)
        if req.path == "/login" and req.method == "GET":
            return self._login(req)
        how = self.guard.authenticate(req.headers)
        if how is None:
            return Response(401, b"401 Unauthorized\n", _TEXT, [(b"www-authenticate", b"Bearer")])
        if req.path == "/favicon.ico":
            return Response(204)  # none: and no 404 in every browser console
        if req.method not in ("GET", "HEAD"):
            origin = req.headers.get(b"origin")
            if origin is not None and origin.split(b"://", 1)[-1].lower() not in self.guard.names:
                return Response(403, b"403 Forbidden: cross-origin request\n", _TEXT)
            if how == "cookie" and not self.guard.csrf_ok(req.headers):
                return Response(403, b"403 Forbidden: missing or wrong X-Hero-CSRF\n", _TEXT)
        try:
            return await self._route(req)
        except NotFound as exc:
            return await self._error(404, exc.message, exc.data)
        except HeroError as exc:
            return await self._error(400, exc.message, exc.data)
        except Exception:
            log.exception("dashboard request failed", extra={"path": req.path})
            return Response(500, b"500 Internal Server Error\n", _TEXT)

    def _login(self, req: Request) -> Response:
        if not self.guard.token_ok(req.query.get("token")):
            return Response(401, b"401 Unauthorized\n", _TEXT)
        # A page that moves on by itself rather than a redirect: the cookie is then sent
        # by a same-site navigation (SameSite=Strict), and the token leaves the address bar.
        body = (
            b'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url=/">'
            b'<title>hero-procd</title><a href="/">Signed in: continue</a>'
        )
        return Response(200, body, headers=[(b"set-cookie", self.guard.set_cookie())])

    async def _error(self, status: int, message: str, data: Any) -> Response:
        resp = await self.render("error.html", nav="", status=status, message=message, data=data)
        resp.status = status
        return resp

    async def _route(self, req: Request) -> Response | Streamed:
        parts = [p for p in req.path.split("/") if p]
        get = req.method in ("GET", "HEAD")
        head = parts[0] if parts else ""
        if get:
            if not parts:
                return await self.overview()
            if head == "static" and len(parts) == 2 and parts[1] in self.static:
                body, ctype = self.static[parts[1]]
                return Response(200, body, ctype, [(b"cache-control", b"private, max-age=3600")])
            if head == "events" and len(parts) == 1 and req.method == "GET":
                return self.events(req)
            if head == "metrics" and len(parts) == 1:
                return Response(200, await self.app.metrics.render(self.app), _METRICS_TYPE)
            lists: dict[str, Callable[[Request], Awaitable[Response]]] = {
                "services": self.services_page,
                "jobs": self.jobs_page,
                "runs": self.runs_page,
                "schedules": self.schedules_page,
                "secrets": self.secrets_page,
            }
            items: dict[str, Callable[[Request, str], Awaitable[Response]]] = {
                "services": self.service_page,
                "jobs": self.job_page,
                "runs": self.run_page,
            }
            if len(parts) == 1 and head in lists:
                return await lists[head](req)
            if len(parts) == 2 and head in items:
                return await items[head](req, parts[1])
        elif req.method == "POST":
            if parts == ["rpc"]:
                answer = await self.dispatcher.handle(req.body)
                if answer is None:
                    return Response(204)
                return Response(200, answer, "application/json")
            if len(parts) == 3:
                return await self.action(head, parts[1], parts[2])
        else:
            return Response(405, b"405 Method Not Allowed\n", _TEXT, [(b"allow", b"GET, POST")])
        return await self._error(404, "no such page", {"path": req.path})

    # -- pages ----------------------------------------------------------------
    async def overview(self) -> Response:
        jobs = await self.reads.jobs_by_status()
        services = (await self.call("service.status_all"))["services"]
        failing = [s for s in services if s["state"] in ("fatal", "backoff") or s["health"] in (
            "unhealthy", "degraded")]  # fmt: skip
        failed = await self.reads.jobs_newest(status="failed", limit=10)
        return await self.render(
            "overview.html",
            nav="overview",
            jobs=jobs,
            job_states=[s.value for s in JobStatus],
            services_by_state=await self.reads.services_by_state(),
            services_total=len(services),
            failing=failing,
            failed=failed,
            runs=await self.reads.runs_by_status(),
            # Not system.info: its row counts scan the log table, re-read at every change.
            info={
                "version": self.app.version,
                "uptime_s": self.app.uptime_s(),
                "jobs_running": len(self.app.executor.running) if self.app.executor else 0,
                "max_parallel": self.app.config.max_parallel,
                "dropped_log_lines_total": await self.app.store.logs.dropped_total(),
            },
        )

    async def services_page(self, req: Request) -> Response:
        services = (await self.call("service.status_all"))["services"]
        return await self.render("services.html", nav="services", services=services)

    async def service_page(self, req: Request, name: str) -> Response:
        service = await self.call("service.get", name=name)
        status = await self.call("service.status", name=name)
        events = (await self.call("service.events", name=name, limit=20))["events"]
        lines = await self.reads.log_tail("service", name, LOG_TAIL)
        return await self.render(
            "service.html",
            nav="services",
            service=service,
            status=status,
            events=events,
            lines=log_html([(None, None, ln.seq, ln.stream, ln.ts, ln.text) for ln in lines]),
            last_seq=lines[-1].seq if lines else 0,
            log_owner=f"service:{name}",
        )

    async def jobs_page(self, req: Request) -> Response:
        status = req.query.get("status") or None
        if status is not None and status not in {s.value for s in JobStatus}:
            status = None
        tag = req.query.get("tag") or None
        run_id = _int(req.query.get("run"))
        before = _int(req.query.get("before"))
        jobs = await self.reads.jobs_newest(
            status=status, tag=tag, run_id=run_id, before_id=before, limit=PAGE_SIZE + 1
        )
        more = len(jobs) > PAGE_SIZE
        jobs = jobs[:PAGE_SIZE]
        base = {k: v for k, v in (("status", status), ("tag", tag), ("run", run_id)) if v}
        older = "/jobs?" + urlencode({**base, "before": jobs[-1]["id"]}) if more else None
        return await self.render(
            "jobs.html",
            nav="jobs",
            jobs=jobs,
            status=status,
            tag=tag or "",
            run_id=run_id or "",
            job_states=[s.value for s in JobStatus],
            older=older,
            newest="/jobs?" + urlencode(base) if before else None,
            self_url=req.path
            + ("?" + urlencode({**base, **({"before": before} if before else {})})),
        )

    async def job_page(self, req: Request, job_id: str) -> Response:
        ident = _int(job_id)
        if ident is None:
            raise NotFound("job not found", {"id": job_id})
        job = await self.call("job.get", id=ident)
        lines = await self.reads.log_tail("job", str(ident), LOG_TAIL)
        duration = None
        if job["started_at"] is not None:
            duration = (job["finished_at"] or time.time()) - job["started_at"]
        spec = {k: job[k] for k in ("command", "action", "tags", "priority", "group", "dedup_key")}
        return await self.render(
            "job.html",
            nav="jobs",
            job=job,
            duration=duration,
            spec=orjson.dumps(spec, option=orjson.OPT_INDENT_2).decode(),
            lines=log_html([(None, None, ln.seq, ln.stream, ln.ts, ln.text) for ln in lines]),
            last_seq=lines[-1].seq if lines else 0,
            log_owner=f"job:{ident}",
        )

    async def runs_page(self, req: Request) -> Response:
        before = _int(req.query.get("before"))
        runs = await self.reads.runs_newest(before_id=before, limit=PAGE_SIZE + 1)
        more = len(runs) > PAGE_SIZE
        runs = runs[:PAGE_SIZE]
        return await self.render(
            "runs.html",
            nav="runs",
            runs=[r.to_dict() for r in runs],
            older=f"/runs?before={runs[-1].id}" if more else None,
            self_url=req.path + (f"?before={before}" if before else ""),
        )

    async def run_page(self, req: Request, run_id: str) -> Response:
        ident = _int(run_id)
        if ident is None:
            raise NotFound("run not found", {"id": run_id})
        run = await self.call("run.get", id=ident)
        drawing = await offload(lambda: graph.svg(run["jobs"]))
        return await self.render("run.html", nav="runs", run=run, graph=drawing)

    async def schedules_page(self, req: Request) -> Response:
        schedules = (await self.call("schedule.list"))["schedules"]
        return await self.render("schedules.html", nav="schedules", schedules=schedules)

    async def secrets_page(self, req: Request) -> Response:
        secrets = (await self.call("secret.list"))["secrets"]
        return await self.render("secrets.html", nav="secrets", secrets=secrets)

    # -- actions (htmx POSTs; the answer is a short message for the flash area) ----------
    async def action(self, area: str, name: str, verb: str) -> Response:
        """A button: start/stop/restart a service, cancel a job or run, pause/resume/trigger."""
        params: dict[str, Any]
        if area == "services" and verb in _SERVICE_VERBS:
            method, params = f"service.{verb}", {"name": name}
        elif area == "schedules" and verb in _SCHEDULE_VERBS:
            method, params = f"schedule.{verb}", {"name": name}
        elif area in ("jobs", "runs") and verb == "cancel" and _int(name) is not None:
            method, params = f"{area[:-1]}.cancel", {"id": _int(name)}
        else:
            return Response(404, b"404 Not Found\n", _TEXT)
        try:
            await self.call(method, **params)
        except HeroError as exc:
            text = f"{method} {name}: {exc.message}"
            return Response(200, f'<span class="flash error">{escape(text)}</span>'.encode())
        text = f"{method} {name}: done"
        return Response(200, f'<span class="flash ok">{escape(text)}</span>'.encode())

    # -- Server-Sent Events ---------------------------------------------------------
    def events(self, req: Request) -> Streamed:
        """`/events?topics=jobs,services&log=job:12&after=SEQ`: changes and log lines, live."""
        topics = [t for t in req.query.get("topics", "").split(",") if t in TOPICS]
        owner: tuple[str, str] | None = None
        kind, _, ident = req.query.get("log", "").partition(":")
        if kind in ("job", "service") and ident:
            owner = (kind, ident)
        after = _int(req.query.get("after")) or 0
        # A browser reconnecting by itself sends the id of the last event it had: the
        # seq of its last line, so the backlog resumes after it (no line twice).
        resumed = _int(req.headers.get(b"last-event-id", b"").decode("latin-1") or None)
        return Streamed(self._event_stream(topics, owner, max(after, resumed or 0)))

    async def _event_stream(
        self, topics: list[str], owner: tuple[str, str] | None, after: int
    ) -> AsyncIterator[bytes]:
        feed = self.app.feed
        sub = feed.subscribe(topics, owner)
        try:
            yield b"retry: 2000\n\n"
            last = after
            if owner is not None:
                # Subscribed first, then read: no line stored in between is missed, and
                # the live lines already sent by this read are skipped by their seq.
                backlog = await self.app.store.logs.read(owner[0], owner[1], after, LOG_TAIL)
                if backlog:
                    rows = [(None, None, ln.seq, ln.stream, ln.ts, ln.text) for ln in backlog]
                    last = backlog[-1].seq
                    for event in log_events(rows):
                        yield event
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sub.wakeup.wait(), HEARTBEAT_S)
                if not sub.wakeup.is_set():
                    yield b": keep-alive\n\n"
                    continue
                changed, lines, missed = sub.take()
                for topic in sorted(changed):
                    yield _sse(topic, topic)
                if missed:
                    yield _sse("logreset", "lines were missed: reload the tail")
                fresh = [row for row in lines if row[2] > last]
                if fresh:
                    last = fresh[-1][2]
                    for event in log_events(fresh):
                        yield event
        finally:
            feed.unsubscribe(sub)


_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _int(value: str | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 18:
        return None
    number = int(value)
    return number if number > 0 else None

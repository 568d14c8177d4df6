"""The dashboard in headless Chromium (Debian's), driven by Playwright.

Playwright rather than Selenium: its `expect` assertions wait for the page to
change (a restart count, a log line arriving over SSE) up to a timeout, with
no polling loops of our own; and it drives the system's Chromium over CDP
(`executable_path`), with no chromedriver to keep in step with the browser.
A screenshot of every page is saved in the test's tmp dir (and in
`$HERO_PROC_SCREENSHOTS` when set: docs/ holds one for the README).
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.helpers import define, finish, sh, submit, wait_for
from integration.web_helpers import CHROMIUM, CHROMIUM_ARGS, Web, web_daemon

IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
if not CHROMIUM.exists():
    if IN_CI:
        pytest.fail(f"{CHROMIUM} is missing: .ci/run installs it with apt-get", pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)
try:
    from playwright import sync_api
except ImportError:
    if IN_CI:
        pytest.fail("playwright is missing: it is a dev dependency", pytrace=False)
    pytest.skip("playwright is not installed", allow_module_level=True)

expect = sync_api.expect
expect.set_options(timeout=30_000)
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, headless, with a fresh profile.

    Playwright's launch() gives Chromium a fresh temporary --user-data-dir of its own
    (and refuses one in `args`), removed when the browser closes.
    """
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    """A daemon with its listener and three services running."""
    with web_daemon() as w:
        with w.daemon.client() as c:
            for name in ("alpha", "beta", "gamma"):
                define(c, name, sh(f"echo {name} up; exec sleep 300"))
                c.call("service.start", name=name)
            # One that crashes at once and is restarted: its count climbs by itself.
            define(c, "flappy", sh("echo flap; exit 3"), restart_delay_s=0.5, start_limit=0)
        yield w


@pytest.fixture
def page(browser: Any, web: Web, tmp_path: Path) -> Iterator[Any]:
    """A logged-in page of a fresh browser context."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(web.login_url)
    page.wait_for_url(web.url)
    yield page
    context.close()


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    """Save a screenshot of the page (and a copy under $HERO_PROC_SCREENSHOTS)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    extra = os.environ.get("HERO_PROC_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)
    return path


def test_without_the_token_the_page_is_refused(browser: Any, web: Web) -> None:
    context = browser.new_context()
    page = context.new_page()
    try:
        response = page.goto(web.url)
        assert response is not None and response.status == 401
        assert page.content().count("401 Unauthorized") == 1
        assert "hero-procd" not in page.content()
        response = page.goto(web.url + "login?token=wrong")
        assert response is not None and response.status == 401
        assert context.cookies() == []
    finally:
        context.close()


def test_login_then_see_three_services_and_restart_one_live(
    page: Any, web: Web, tmp_path: Path
) -> None:
    shot(page, tmp_path, "overview")
    expect(page.locator("h1")).to_have_text("Overview")
    page.goto(web.url + "services")
    for name in ("alpha", "beta", "gamma"):
        row = page.locator(f'tr[data-service="{name}"]')
        expect(row.locator(".state-cell")).to_have_text("running")
    expect(page.locator("tr[data-service]")).to_have_count(4)
    shot(page, tmp_path, "services")
    page.evaluate("window.__not_reloaded = true")
    beta = page.locator('tr[data-service="beta"]')
    pid_before = beta.locator(".pid").inner_text()
    assert pid_before.isdigit()
    expect(beta.locator(".restarts")).to_have_text("0")
    beta.locator("button.restart").click()
    # The row changes in place (SSE → htmx re-fetch of the table): its restart count
    # (the manual one, apart from the policy's) and a new process.
    expect(beta.locator(".restarts")).to_have_text("0 (+1 manual)")
    expect(beta.locator(".pid")).not_to_have_text(pid_before)
    expect(beta.locator(".state-cell")).to_have_text("running")
    expect(page.locator("#flash")).to_contain_text("service.restart beta: done")
    with web.daemon.client() as c:
        status = c.call("service.status", name="beta")
    assert (status["restarts"], status["manual_restarts"]) == (0, 1)
    # The restart count of a service restarted by its policy climbs, live as well.
    with web.daemon.client() as c:
        c.call("service.start", name="flappy")
    flappy = page.locator('tr[data-service="flappy"] .restarts')
    expect(flappy).not_to_have_text("0")
    seen = int(flappy.inner_text())
    expect(flappy).not_to_have_text(str(seen))
    assert page.evaluate("window.__not_reloaded") is True
    with web.daemon.client() as c:
        c.call("service.stop", name="flappy")
        restarts = c.call("service.status", name="flappy")["restarts"]
    expect(flappy).to_have_text(str(restarts))
    page.goto(web.url + "services/beta")
    expect(page.locator("#events")).to_contain_text("restart")
    expect(page.locator("#log")).to_contain_text("beta up")
    shot(page, tmp_path, "service")


def test_open_a_job_and_watch_its_lines_arrive(page: Any, web: Web, tmp_path: Path) -> None:
    gate = web.daemon.workdir / "job-gate"
    with web.daemon.client() as c:
        script = f"echo first line; while [ ! -e {gate} ]; do sleep 0.05; done; echo second line"
        job_id = submit(c, command=sh(script), tags=["browser"])
        wait_for(lambda: "first" in str(c.call("job.logs", id=job_id)) or None, "first line")
    page.goto(web.url + f"jobs/{job_id}")
    expect(page.locator("#log")).to_contain_text("first line")
    expect(page.locator("#job-status")).to_contain_text("running")
    page.evaluate("window.__not_reloaded = true")
    assert "second line" not in page.locator("#log").inner_text()
    gate.touch()
    expect(page.locator("#log")).to_contain_text("second line")
    expect(page.locator("#job-status")).to_contain_text("succeeded")
    assert page.locator("#log .line").count() == 2  # each line once
    assert page.evaluate("window.__not_reloaded") is True
    shot(page, tmp_path, "job")
    page.goto(web.url + "jobs?tag=browser")
    expect(page.locator(f'tr[data-job="{job_id}"]')).to_be_visible()
    expect(page.locator("tr[data-job]")).to_have_count(1)
    shot(page, tmp_path, "jobs")


def test_see_a_runs_graph(page: Any, web: Web, tmp_path: Path) -> None:
    with web.daemon.client() as c:
        run = c.call(
            "run.submit",
            name="diamond",
            jobs=[
                {"key": "fetch", "command": ["true"]},
                {"key": "build", "command": ["true"], "depends_on": ["fetch"]},
                {"key": "test", "command": ["false"], "depends_on": ["fetch"]},
                {"key": "ship", "command": ["true"], "depends_on": ["build", "test"]},
            ],
        )
        for job_id in run["jobs"].values():
            finish(c, job_id)
    page.goto(web.url + f"runs/{run['id']}")
    graph = page.locator("svg.run-graph")
    expect(graph).to_be_visible()
    expect(graph.locator("a.node")).to_have_count(4)
    expect(graph.locator("path.edge")).to_have_count(4)
    expect(graph.locator('a.node[data-key="test"]')).to_have_attribute("data-status", "failed")
    # Layers: fetch left of build and test, which are left of ship.
    x = {k: graph.locator(f'a.node[data-key="{k}"] rect').get_attribute("x") for k in run["jobs"]}
    assert int(x["fetch"] or 0) < int(x["build"] or 0) == int(x["test"] or 0) < int(x["ship"] or 0)
    shot(page, tmp_path, "run")
    page.goto(web.url + "runs")
    expect(page.locator("#runs")).to_contain_text("diamond")
    shot(page, tmp_path, "runs")


def test_schedules_and_secrets_pages(page: Any, web: Web, tmp_path: Path) -> None:
    with web.daemon.client() as c:
        c.call("schedule.set", name="nightly", cron="0 3 * * *", job={"command": ["true"]})
        c.call("secret.set", name="API_KEY", value="do-not-show-me")
    page.goto(web.url + "schedules")
    row = page.locator('tr[data-schedule="nightly"]')
    expect(row).to_contain_text("active")
    row.get_by_role("button", name="pause").click()
    expect(row).to_contain_text("paused")
    row.get_by_role("button", name="trigger").click()
    expect(row.locator("a")).to_contain_text("job")
    shot(page, tmp_path, "schedules")
    page.goto(web.url + "secrets")
    expect(page.locator("#secrets")).to_contain_text("API_KEY")
    assert "do-not-show-me" not in page.content()
    shot(page, tmp_path, "secrets")


def test_the_page_script_cannot_post_without_the_csrf_header(page: Any, web: Web) -> None:
    """A fetch with the cookie but without X-Hero-CSRF (what another site could make) fails."""
    status = page.evaluate(
        "async () => (await fetch('/services/alpha/stop', {method: 'POST'})).status"
    )
    assert status == 403
    status = page.evaluate(
        """async () => (await fetch('/rpc', {method: 'POST', body: JSON.stringify(
            {jsonrpc: '2.0', method: 'service.stop', params: {name: 'alpha'}, id: 1})})).status"""
    )
    assert status == 403
    with web.daemon.client() as c:
        assert c.call("service.status", name="alpha")["state"] == "running"


HIDE = """() => {
    Object.defineProperty(document, 'hidden', {value: %s, configurable: true});
    document.dispatchEvent(new Event('visibilitychange'));
}"""


def test_a_hidden_page_lets_go_of_its_stream_and_catches_up_when_shown(page: Any, web: Web) -> None:
    gate = web.daemon.workdir / "hidden-gate"
    with web.daemon.client() as c:
        script = f"echo early; while [ ! -e {gate} ]; do sleep 0.05; done; echo late"
        job_id = submit(c, command=sh(script))
        wait_for(lambda: "early" in str(c.call("job.logs", id=job_id)) or None, "first line")
    page.goto(web.url + f"jobs/{job_id}")
    expect(page.locator("#log")).to_contain_text("early")
    streams: list[Any] = []
    page.on("request", lambda r: streams.append(r.url) if "/events" in r.url else None)
    page.evaluate(HIDE % "true")
    gate.touch()
    with web.daemon.client() as c:
        finish(c, job_id)
    page.evaluate(HIDE % "false")
    expect(page.locator("#log")).to_contain_text("late")
    expect(page.locator("#job-status")).to_contain_text("succeeded")
    assert page.locator("#log .line").count() == 2  # resumed after the last line shown
    assert any("after=1" in url for url in streams), streams


def test_more_tabs_than_the_browsers_six_connections_when_hidden(
    page: Any, web: Web, tmp_path: Path
) -> None:
    """Each open page holds a connection for its stream; a hidden one gives it back."""
    pages = [page]
    try:
        for n in range(8):
            tab = page if n == 0 else page.context.new_page()
            if n:
                pages.append(tab)
            tab.goto(web.url + "services")
            expect(tab.locator("#services")).to_be_visible()
            tab.evaluate(HIDE % "true")  # as a browser does for a tab in the background
        shown = pages[0]
        shown.evaluate(HIDE % "false")
        with web.daemon.client() as c:
            before = c.call("service.status", name="gamma")["pid"]
            c.call("service.restart", name="gamma")
        gamma = shown.locator('tr[data-service="gamma"] .pid')
        expect(gamma).not_to_have_text(str(before))
    finally:
        for tab in pages[1:]:
            tab.close()


XSS = [
    "<img src=x onerror=\"window.__xss = 'img'\">",
    "<script>window.__xss = 'script'</script>",
    '"><svg onload="window.__xss = \'svg\'">',
    "data: event: services",
]


def test_markup_in_log_lines_and_run_keys_is_shown_as_text_not_run(page: Any, web: Web) -> None:
    """Job output (in the page and arriving live over SSE) and run keys in the graph are
    text: the browser shows them and runs none of them."""
    gate = web.daemon.workdir / "xss-gate"
    with web.daemon.client() as c:
        script = (
            f"printf '%s\\n' {' '.join(shlex.quote(x) for x in XSS)}; "
            f"while [ ! -e {gate} ]; do sleep 0.05; done; printf '%s\\n' {shlex.quote(XSS[0])}"
        )
        job_id = submit(c, command=sh(script))
        wait_for(lambda: "svg" in str(c.call("job.logs", id=job_id)) or None, "the first lines")
    page.goto(web.url + f"jobs/{job_id}")
    expect(page.locator("#log .line")).to_have_count(len(XSS))
    gate.touch()  # one more, live over SSE
    expect(page.locator("#log .line")).to_have_count(len(XSS) + 1)
    texts = page.locator("#log .line").all_inner_texts()
    for want, got in zip([*XSS, XSS[0]], texts, strict=True):
        assert got.endswith(want), (want, got)
    assert page.evaluate("window.__xss") is None
    assert page.locator("#log img, #log script, #log svg").count() == 0
    with web.daemon.client() as c:
        finish(c, job_id)
        jobs = [{"key": XSS[0], "command": ["true"]}]
        jobs += [{"key": k, "command": ["true"], "depends_on": [XSS[0]]} for k in XSS[1:]]
        run = c.call("run.submit", name=XSS[2], jobs=jobs)
        for ident in run["jobs"].values():
            finish(c, ident)
    for path in (f"runs/{run['id']}", "runs", "jobs", ""):
        page.goto(web.url + path)
        expect(page.locator("h1")).to_be_visible()
        assert page.evaluate("window.__xss") is None, path
    page.goto(web.url + f"runs/{run['id']}")
    nodes = page.locator("svg.run-graph a.node")
    expect(nodes).to_have_count(len(XSS))
    assert sorted(n.get_attribute("data-key") or "" for n in nodes.all()) == sorted(XSS)
    assert page.locator("svg.run-graph image, svg.run-graph script").count() == 0

"""The real `hero-proc` CLI, run as a subprocess against the real daemon over its socket."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from hero_procd.errors import NotFound
from integration.daemon_proc import DaemonProcess
from integration.helpers import run_done

# The CLI process must never load the daemon's machinery.
HEAVY_MODULES = ("asyncio", "uvloop", "aiosqlite", "jsonrpcserver", "h11")


def hero_proc(
    socket_path: Path | None,
    *args: str,
    stdin: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    python_flags: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run `hero-proc [--socket S] ARGS...` to completion; its exit code and output."""
    argv = [sys.executable, *python_flags, "-m", "hero_procd.cli.main"]
    if socket_path is not None:
        argv += ["--socket", str(socket_path)]
    full_env = dict(os.environ)
    full_env.pop("HERO_PROC_SOCKET", None)
    full_env.update(env or {})
    return subprocess.run(
        [*argv, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=60,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The parsed --json stdout of a command that must have succeeded."""
    return orjson.loads(ok(result))


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str, code: int = 1) -> str:
    """Assert the command failed with exit `code` and exactly one `hero-proc: ...` stderr line."""
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hero-proc: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def rows_of(table: str) -> list[list[str]]:
    """A printed table's data rows, split on whitespace (the header dropped)."""
    return [line.split() for line in table.splitlines()[1:]]


def test_ping_and_info(daemon: DaemonProcess) -> None:
    """`ping` answers; `info --json` is the daemon's system.info; $HERO_PROC_SOCKET is honoured."""
    assert "pong" in ok(hero_proc(daemon.socket_path, "ping"))
    info = ok_json(hero_proc(daemon.socket_path, "--json", "info"))
    assert info["socket"] == str(daemon.socket_path)
    assert daemon.proc is not None and info["pid"] == daemon.proc.pid
    assert set(info["counts"]) >= {"actions", "jobs", "runs", "services"}
    by_env = hero_proc(None, "ping", "--json", env={"HERO_PROC_SOCKET": str(daemon.socket_path)})
    assert ok_json(by_env)["pong"] is True


def test_action_round_trip(daemon: DaemonProcess, workdir: Path) -> None:
    """action set (argv and script) / get / list --tag / delete, then get fails in one line."""
    (workdir / "sub").mkdir()
    made = hero_proc(
        daemon.socket_path,
        "action", "set", "build",
        "--env", "A=1", "--env", "B=x=y", "--cwd", "sub", "--timeout", "30",
        "--retries", "2", "--tag", "ci",
        "--", "make", "-j4", "all",
        cwd=workdir,
    )  # fmt: skip
    assert "build" in ok(made)
    got = ok_json(hero_proc(daemon.socket_path, "action", "get", "build", "--json"))
    assert got["command"] == ["make", "-j4", "all"]
    assert got["env"] == {"A": "1", "B": "x=y"}
    assert got["cwd"] == str(workdir / "sub")
    assert got["timeout_s"] == 30.0
    assert got["retries"] == 2
    assert got["tags"] == ["ci"]

    script = "echo one\necho two"
    made = hero_proc(
        daemon.socket_path,
        "--json", "action", "set", "greet", "--script", script, "--interpreter", "/bin/bash -e",
    )  # fmt: skip
    assert ok_json(made)["interpreter"] == ["/bin/bash", "-e"]
    assert ok_json(made)["script"] == script

    tagged = rows_of(ok(hero_proc(daemon.socket_path, "action", "list", "--tag", "ci")))
    assert [row[0] for row in tagged] == ["build"]
    everything = ok(hero_proc(daemon.socket_path, "action", "list"))
    assert everything.splitlines()[0].split() == ["NAME", "COMMAND", "TAGS", "UPDATED"]
    assert [row[0] for row in rows_of(everything)] == ["build", "greet"]

    assert ok_json(hero_proc(daemon.socket_path, "--json", "action", "delete", "greet")) == {
        "deleted": 1
    }
    one_line_error(hero_proc(daemon.socket_path, "action", "get", "greet"), "not found", "greet")
    with daemon.client() as c:
        assert [a["name"] for a in c.call("action.list")["actions"]] == ["build"]


def test_job_submit_get_list(daemon: DaemonProcess) -> None:
    """job submit prints the id; get and list --json show what was submitted; paging works."""
    ok(hero_proc(daemon.socket_path, "action", "set", "hello", "--", "/bin/echo", "hello"))
    submit = [
        "job", "submit", "--tag", "cli", "--tag", "x", "--priority", "7",
        "--group", "g1", "--env", "K=V", "--timeout", "9", "--retries", "1",
        "--", "/bin/true", "--flag",
    ]  # fmt: skip
    first = ok(hero_proc(daemon.socket_path, *submit))
    job_id = int(first.strip())
    second = ok_json(
        hero_proc(
            daemon.socket_path, "--json", "job", "submit", "--action", "hello", "--tag", "cli"
        )
    )
    third = ok_json(hero_proc(daemon.socket_path, "job", "submit", "--script", "exit 0", "--json"))
    assert second["id"] == job_id + 1 and third["id"] == job_id + 2

    job = ok_json(hero_proc(daemon.socket_path, "--json", "job", "get", str(job_id)))
    assert job["id"] == job_id
    assert job["command"] == ["/bin/true", "--flag"]
    assert job["tags"] == ["cli", "x"]
    assert (job["priority"], job["group"], job["env"]) == (7, "g1", {"K": "V"})
    assert (job["timeout_s"], job["retries"]) == (9.0, 1)
    assert "command" in ok(hero_proc(daemon.socket_path, "job", "get", str(job_id)))

    # Newest first unless asked otherwise; --oldest-first and --after-id page up.
    tagged = ok_json(hero_proc(daemon.socket_path, "--json", "job", "list", "--tag", "cli"))
    assert [j["id"] for j in tagged["jobs"]] == [job_id + 1, job_id]
    assert tagged["jobs"][0]["action"] == "hello"
    page = ok_json(
        hero_proc(daemon.socket_path, "--json", "job", "list", "--oldest-first", "--limit", "2")
    )
    assert [j["id"] for j in page["jobs"]] == [job_id, job_id + 1]
    assert page["next_after_id"] == job_id + 1
    rest = hero_proc(daemon.socket_path, "job", "list", "--after-id", str(job_id + 1))
    assert [row[0] for row in rows_of(ok(rest))] == [str(job_id + 2)]

    # Two command sources at once is click's usage error: exit 2, nothing sent.
    both = hero_proc(daemon.socket_path, "job", "submit", "--action", "hello", "--", "ls")
    assert both.returncode == 2
    assert "--action" in both.stderr
    with daemon.client() as c:
        assert len(c.call("job.list")["jobs"]) == 3


RUN_SPEC = {
    "name": "pipeline",
    "tags": ["nightly"],
    "jobs": [
        {"key": "fetch", "command": ["/bin/true"]},
        {"key": "build", "command": ["/bin/true"], "depends_on": ["fetch"]},
        {"key": "test", "script": "exit 0", "depends_on": ["build", "fetch"]},
    ],
}


def test_run_submit_from_file_and_stdin(daemon: DaemonProcess, workdir: Path) -> None:
    """run submit -f FILE and -f - create runs; run get shows each job's key, id, status, deps."""
    spec_file = workdir / "run.json"
    spec_file.write_bytes(orjson.dumps(RUN_SPEC))
    from_file = int(ok(hero_proc(daemon.socket_path, "run", "submit", "-f", str(spec_file))))
    one_job = orjson.dumps({"jobs": [{"key": "only", "command": ["/bin/true"]}]}).decode()
    from_stdin = ok_json(
        hero_proc(daemon.socket_path, "--json", "run", "submit", "-f", "-", stdin=one_job)
    )
    assert from_stdin["id"] == from_file + 1
    assert list(from_stdin["jobs"]) == ["only"]

    with daemon.client() as c:
        run = run_done(c, from_file)  # finished: the CLI's read below sees the same statuses
    ids = {j["key"]: j["id"] for j in run["jobs"]}
    status = {j["key"]: j["status"] for j in run["jobs"]}
    shown = ok(hero_proc(daemon.socket_path, "run", "get", str(from_file)))
    assert "pipeline" in shown
    _, table = shown.split("\n\n")
    assert table.splitlines()[0].split() == ["KEY", "ID", "STATUS", "DEPENDS_ON"]
    assert rows_of(table) == [
        ["fetch", str(ids["fetch"]), status["fetch"], "-"],
        ["build", str(ids["build"]), status["build"], "fetch"],
        ["test", str(ids["test"]), status["test"], "build,", "fetch"],
    ]
    listed = rows_of(ok(hero_proc(daemon.socket_path, "run", "list", "--oldest-first")))
    assert [row[0] for row in listed] == [str(from_file), str(from_file + 1)]
    assert listed[0][1] == "pipeline"

    bad = hero_proc(
        daemon.socket_path,
        "run",
        "submit",
        "-f",
        "-",
        stdin='{"jobs": [{"key": 1, "command": ["/bin/true"]}]}',
    )
    one_line_error(bad, "invalid params", "jobs[0].key")
    one_line_error(hero_proc(daemon.socket_path, "run", "submit", "-f", "-", stdin="[1]"), "object")
    with daemon.client() as c:
        assert len(c.call("run.list")["runs"]) == 2


def test_service_define_list_status(daemon: DaemonProcess) -> None:
    """service define/list/status, and the `status` table agrees with the daemon."""
    defined = hero_proc(
        daemon.socket_path,
        "--json", "service", "define", "web",
        "--restart", "always", "--autostart", "--requires", "db", "--env", "PORT=8080",
        "--", "sleep", "1000",
    )  # fmt: skip
    web = ok_json(defined)
    assert (web["restart"], web["autostart"], web["requires"]) == ("always", True, ["db"])
    assert web["env"] == {"PORT": "8080"}
    ok(hero_proc(daemon.socket_path, "service", "define", "db", "--script", "sleep 1000"))

    listed = ok_json(hero_proc(daemon.socket_path, "service", "list", "--json"))
    assert [s["name"] for s in listed["services"]] == ["db", "web"]
    one = ok_json(hero_proc(daemon.socket_path, "--json", "service", "status", "web"))
    assert one["name"] == "web" and one["state"] == web["state"]
    assert "state" in ok(hero_proc(daemon.socket_path, "service", "status", "db"))

    fast_json = ok_json(hero_proc(daemon.socket_path, "--json", "status"))  # global --json
    click_json = ok_json(hero_proc(daemon.socket_path, "status", "--json"))  # command's --json
    assert [s["name"] for s in fast_json["services"]] == ["db", "web"]
    states = {s["name"]: s["state"] for s in click_json["services"]}
    assert {s["name"]: s["state"] for s in fast_json["services"]} == states

    shown = ok(hero_proc(daemon.socket_path, "status"))
    assert "\x1b[" not in shown  # no colour into a pipe
    lines = shown.splitlines()
    headers = ["NAME", "STATE", "HEALTH", "PID", "UPTIME", "RESTARTS", "MEMORY", "CPU"]
    assert lines[0].split() == headers
    assert [row[:2] for row in rows_of(shown)] == [["db", states["db"]], ["web", states["web"]]]
    assert len({len(line) for line in lines}) == 1  # right-aligned last column: equal widths


def test_clean_by_tag(daemon: DaemonProcess) -> None:
    """clean --tag reports true counts: a job is deleted if finished, else skipped as active."""
    job_id = int(
        ok(hero_proc(daemon.socket_path, "job", "submit", "--tag", "tmp", "--", "/bin/true"))
    )
    other = int(
        ok(hero_proc(daemon.socket_path, "job", "submit", "--tag", "keep", "--", "/bin/true"))
    )
    result = ok_json(hero_proc(daemon.socket_path, "--json", "clean", "--tag", "tmp"))
    deleted = result["deleted"]["jobs"]
    assert deleted + result["skipped_active"] == 1
    with daemon.client() as c:
        if deleted:
            try:
                c.call("job.get", id=job_id)
                raise AssertionError("a cleaned job is still there")
            except NotFound:
                pass
        else:
            assert c.call("job.get", id=job_id)["id"] == job_id
        assert c.call("job.get", id=other)["id"] == other
    text = ok(hero_proc(daemon.socket_path, "clean", "--tag", "nothing-has-this"))
    assert text.strip() == "deleted 0 jobs, 0 runs, 0 log lines; skipped 0 active jobs"


def test_wipe_needs_yes(daemon: DaemonProcess) -> None:
    """wipe without --yes fails in one line and deletes nothing; wipe --yes reports counts."""
    with daemon.client() as c:
        c.call("action.set", name="a1", command=["/bin/true"])
        c.call("service.define", name="s1", command=["sleep", "1000"])
        c.call("job.submit", command=["/bin/true"])
        c.call("run.submit", jobs=[{"key": "k", "command": ["/bin/true"]}])
        before = c.call("system.info")["counts"]
    one_line_error(hero_proc(daemon.socket_path, "wipe"), "--yes")
    with daemon.client() as c:
        after_refusal = c.call("system.info")["counts"]
    for table in ("actions", "services", "jobs", "runs"):
        assert after_refusal[table] == before[table]

    wiped = ok_json(hero_proc(daemon.socket_path, "--json", "wipe", "--yes"))["deleted"]
    assert (wiped["actions"], wiped["services"], wiped["jobs"], wiped["runs"]) == (1, 1, 2, 1)
    with daemon.client() as c:
        counts = c.call("system.info")["counts"]
    assert (counts["actions"], counts["services"], counts["jobs"], counts["runs"]) == (0, 0, 0, 0)
    again = ok(hero_proc(daemon.socket_path, "wipe", "--yes"))
    assert again.startswith("deleted ") and "1 " not in again


def test_errors_are_one_line(daemon: DaemonProcess) -> None:
    """A daemon error (unknown id, invalid params) is one stderr line and exit 1."""
    one_line_error(hero_proc(daemon.socket_path, "job", "get", "424242"), "not found", "424242")
    one_line_error(
        hero_proc(daemon.socket_path, "job", "list", "--status", "bogus"),
        "invalid params",
        "status",
    )
    usage = hero_proc(daemon.socket_path, "job", "get", "not-a-number")
    assert usage.returncode == 2  # a usage error is click's


def test_daemon_not_running(workdir: Path) -> None:
    """No daemon on the socket: one line naming the socket, exit 1 (ping and status)."""
    missing = workdir / "nobody.sock"
    one_line_error(hero_proc(missing, "ping"), "cannot reach hero-procd", str(missing))
    one_line_error(hero_proc(missing, "status"), "cannot reach hero-procd", str(missing))


def imported_modules(stderr: str) -> set[str]:
    """The modules named by `python -X importtime` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_cli_stays_import_light(daemon: DaemonProcess) -> None:
    """The click CLI (`--json ping`, `job list`) never imports the daemon's machinery.

    `status` and `ping` themselves take the fast path: see test_cli_fast.py.
    """
    flags = ("-X", "importtime")
    ping = hero_proc(daemon.socket_path, "--json", "ping", python_flags=flags)
    jobs = hero_proc(daemon.socket_path, "job", "list", python_flags=flags)
    assert ping.returncode == 0 and jobs.returncode == 0, ping.stderr + jobs.stderr
    for result in (ping, jobs):
        modules = imported_modules(result.stderr)
        assert "hero_procd.client" in modules  # the parse saw the real imports
        heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY_MODULES)
        assert heavy == [], heavy
        assert "click" in modules

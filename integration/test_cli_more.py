"""More of the real `hero-proc` CLI against the real daemon: waiting, logs, cancelling,
groups, the service lifecycle, schedules, secrets and retention."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
from pathlib import Path

import orjson

from integration.daemon_proc import DaemonProcess
from integration.helpers import run_done, wait_for, wait_running, wait_status
from integration.test_cli import hero_proc, ok, ok_json, one_line_error, rows_of


def columns(table: str) -> list[list[str]]:
    """A printed table's data rows split on runs of 2+ spaces (cells may hold one space)."""
    return [re.split(r"\s{2,}", line.strip()) for line in table.splitlines()[1:]]


def test_job_wait_logs_cancel_batch(daemon: DaemonProcess, workdir: Path) -> None:
    """submit --wait passes the exit code on; logs -f ends with the job; cancel, wait, batch."""
    sock = daemon.socket_path
    failed = hero_proc(sock, "job", "submit", "--wait", "--", "sh", "-c", "exit 3")
    assert failed.returncode == 3, failed.stderr
    assert failed.stdout.startswith("job ") and " failed" in failed.stdout
    waited = ok_json(hero_proc(sock, "--json", "job", "submit", "--wait", "--", "/bin/true"))
    assert (waited["status"], waited["exit_code"], waited["done"]) == ("succeeded", 0, True)

    script = "echo a; echo b >&2; echo c; exit 4"
    with_logs = hero_proc(sock, "job", "submit", "--wait", "--logs", "--script", script)
    assert with_logs.returncode == 4, with_logs.stderr
    assert with_logs.stdout == "a\nc\n"
    err_lines = with_logs.stderr.splitlines()
    assert err_lines[0] == "b" and " failed" in err_lines[-1]

    # logs -f returns once the job has ended, with every line, in order.
    steps = "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.15; done; echo gone >&2"
    with daemon.client() as c:
        job_id = c.call("job.submit", script=steps)["id"]
        followed = hero_proc(sock, "job", "logs", str(job_id), "-f")
        assert c.call("job.get", id=job_id)["status"] == "succeeded"
    assert ok(followed) == "".join(f"line{i}\n" for i in range(1, 7))
    assert followed.stderr == "gone\n"
    later = hero_proc(sock, "job", "logs", str(job_id), "--after-seq", "4")
    assert ok(later) == "line5\nline6\n" and later.stderr == "gone\n"
    raw_pages = ok(hero_proc(sock, "--json", "job", "logs", str(job_id))).splitlines()
    pages = [orjson.loads(p) for p in raw_pages]
    assert len(pages) == 1 and pages[0]["done"] and pages[0]["status"] == "succeeded"
    assert [ln["text"] for ln in pages[0]["lines"]][-1] == "gone"

    # A wait that runs out exits 124 (like timeout(1)), not 1 like a job that failed with 1;
    # cancel; then wait reports it, exit 1.
    with daemon.client() as c:
        sleeper = c.call("job.submit", command=["sleep", "100"])["id"]
        wait_running(c, sleeper, timeout_s=15.0)
    one_line_error(
        hero_proc(sock, "job", "wait", str(sleeper), "--timeout", "0.3"), "running", code=124
    )
    assert ok(hero_proc(sock, "job", "cancel", str(sleeper))).strip() in (
        f"job {sleeper} cancelling",
        f"job {sleeper} cancelled",
    )
    cancelled = hero_proc(sock, "job", "wait", str(sleeper), "--timeout", "30")
    assert cancelled.returncode == 1 and f"job {sleeper} cancelled" in cancelled.stdout
    with daemon.client() as c:
        assert c.call("job.get", id=sleeper)["status"] == "cancelled"
    one_line_error(hero_proc(sock, "job", "cancel", str(sleeper)), "already finished")

    batch = {
        "defaults": {"tags": ["b"]},
        "jobs": [
            {"command": ["/bin/true"], "dedup_key": "d"},
            {"command": "not a list"},
            {"command": ["/bin/true"], "dedup_key": "d"},
        ],
    }
    (workdir / "batch.json").write_bytes(orjson.dumps(batch))
    counted = hero_proc(sock, "job", "batch", "-f", str(workdir / "batch.json"))
    assert counted.returncode == 1, counted.stderr  # one item failed: the batch did not all go
    assert counted.stdout.strip() == "submitted 1, deduplicated 1, superseded 0, failed 1"
    assert counted.stderr.startswith("jobs[1]: ") and "command" in counted.stderr
    as_list = orjson.dumps([{"command": ["/bin/true"], "tags": ["b"]}]).decode()
    whole = ok_json(hero_proc(sock, "--json", "job", "batch", "-f", "-", stdin=as_list))
    assert len(whole["submitted"]) == 1 and whole["failed"] == []
    with daemon.client() as c:
        assert len(c.call("job.list", tag="b")["jobs"]) == 2


def test_run_cancel_and_groups(daemon: DaemonProcess) -> None:
    """group set/list/delete change the daemon's limits; run cancel; run get shows job states."""
    sock = daemon.socket_path
    assert "at most 1" in ok(hero_proc(sock, "group", "set", "g", "1"))
    with daemon.client() as c:
        assert c.call("group.list")["groups"] == [
            {"name": "g", "max_parallel": 1, "running": 0, "stack": None}
        ]
        run = c.call(
            "run.submit",
            jobs=[
                {"key": "first", "command": ["sleep", "100"], "group": "g"},
                {"key": "second", "command": ["sleep", "100"], "group": "g"},
                {"key": "after", "command": ["/bin/true"], "depends_on": ["first"]},
            ],
        )
        wait_for(
            lambda: True if c.call("group.list")["groups"][0]["running"] == 1 else None,
            "one job of group g to run",
            15.0,
        )
    assert rows_of(ok(hero_proc(sock, "group", "list"))) == [["g", "1", "1"]]

    cancelled = ok(hero_proc(sock, "run", "cancel", str(run["id"])))
    assert cancelled.strip() == f"run {run['id']}: cancelled 2 jobs, signalled 1"
    with daemon.client() as c:
        done = run_done(c, run["id"], 15.0)
        assert done["status"] == "cancelled", done
    shown = ok(hero_proc(sock, "run", "get", str(run["id"])))
    statuses = {row[0]: row[2] for row in rows_of(shown.split("\n\n")[1])}
    assert statuses == {j["key"]: j["status"] for j in done["jobs"]}
    assert set(statuses.values()) <= {"cancelled", "skipped"}

    assert "deleted" in ok(hero_proc(sock, "group", "delete", "g"))
    assert "no group" in ok(hero_proc(sock, "group", "delete", "g"))
    with daemon.client() as c:
        assert c.call("group.list")["groups"] == []


def read_pty(fd: int) -> bytes:
    """Everything written to a pseudo-terminal whose writer has exited."""
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other end is closed
            return out
        if not chunk:
            return out
        out += chunk


def test_service_lifecycle(daemon: DaemonProcess, workdir: Path) -> None:
    """define with every option, start --wait, logs (with a secret), degraded health,
    colours on a terminal, restart, stop, Ctrl-C of logs -f, delete."""
    sock = daemon.socket_path
    ok(hero_proc(sock, "secret", "set", "tok", stdin="s3cret\n"))
    healthy = workdir / "healthy"
    healthy.touch()
    define = [
        "service", "define", "web",
        "--start-secs", "0.1", "--restart-delay", "0.5", "--start-limit", "3",
        "--stop-signal", "INT", "--stop-timeout", "5", "--after", "db", "--tag", "t",
        "--secret", "TOKEN=tok",
        "--health-exec", f"test -f '{healthy}'", "--health-interval", "0.2",
        "--health-retries", "1",
        "--", "sh", "-c", "echo tick $TOKEN; echo tock >&2; exec sleep 1000",
    ]  # fmt: skip
    assert "defined" in ok(hero_proc(sock, *define))
    oneshot = hero_proc(
        sock, "service", "define", "once", "--oneshot", "--restart-on-unhealthy",
        "--health-tcp", "127.0.0.1:9", "--", "/bin/true",
    )  # fmt: skip
    ok(oneshot)
    two_checks = hero_proc(
        sock, "service", "define", "x", "--health-tcp", "h:1", "--health-http", "http://h/",
        "--", "/bin/true",
    )  # fmt: skip
    assert two_checks.returncode == 2
    with daemon.client() as c:
        web = c.call("service.get", name="web")
        assert (web["start_secs"], web["restart_delay_s"], web["start_limit"]) == (0.1, 0.5, 3)
        assert (web["stop_signal"], web["stop_timeout_s"], web["after"]) == ("INT", 5.0, ["db"])
        assert (web["env_from_secrets"], web["tags"]) == ({"TOKEN": "tok"}, ["t"])
        once = c.call("service.get", name="once")
        assert once["oneshot"] is True and once["restart_on_unhealthy"] is True
        assert [s["name"] for s in c.call("service.list")["services"]] == ["once", "web"]

    started = ok(hero_proc(sock, "service", "start", "web", "--wait", "20"))
    assert started.startswith("service web running (pid ")
    logs = hero_proc(sock, "service", "logs", "web", "-f", "--max-wait", "1.5")
    assert ok(logs) == "tick s3cret\n" and logs.stderr == "tock\n"
    assert ok_json(hero_proc(sock, "--json", "service", "get", "web"))["state"] == "running"

    healthy.unlink()
    with daemon.client() as c:
        wait_status(c, "web", lambda st: st["health"] == "degraded", "web to be degraded", 15.0)
        # Memory is sampled in the background: wait for the first figure.
        wait_status(
            c, "web", lambda st: st["memory_bytes"] is not None, "web's first memory figure", 15.0
        )
    rows = rows_of(ok(hero_proc(sock, "status")))
    assert rows[0][:3] == ["once", "stopped", "-"]
    assert rows[1][:3] == ["web", "running", "degraded"]
    assert rows[1][6].endswith(("B", "K", "M", "G"))  # memory in human units

    # On a terminal, states and health are coloured.
    leader, follower = pty.openpty()
    cli = [sys.executable, "-m", "hero_procd.cli.main", "--socket", str(sock)]
    subprocess.run(
        [*cli, "status"], stdout=follower, stderr=subprocess.DEVNULL, timeout=60, check=True
    )
    os.close(follower)
    painted = read_pty(leader).decode()
    os.close(leader)
    assert "\x1b[32mrunning\x1b[0m" in painted and "\x1b[31mdegraded\x1b[0m" in painted
    assert "\x1b[2mstopped\x1b[0m" in painted

    healthy.touch()
    with daemon.client() as c:
        old_pid = c.call("service.status", name="web")["pid"]
        restarted = ok(hero_proc(sock, "service", "restart", "web", "--wait", "20"))
        assert restarted.startswith("service web running")
        assert c.call("service.status", name="web")["pid"] != old_pid

    # Ctrl-C ends `logs -f` quietly with 130.
    follow = subprocess.Popen(
        [*cli, "service", "logs", "web", "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follow.stdout is not None and follow.stdout.readline() == "tick s3cret\n"
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    assert follow.returncode == 130 and "Traceback" not in err and "Aborted" not in err

    assert ok(hero_proc(sock, "service", "stop", "web")).startswith("service web stopped")
    with daemon.client() as c:
        assert c.call("service.status", name="web")["state"] == "stopped"
    assert ok(hero_proc(sock, "service", "delete", "web")).strip() == "service web deleted"
    one_line_error(hero_proc(sock, "service", "get", "web"), "not found", "web")
    with daemon.client() as c:
        assert [s["name"] for s in c.call("service.list")["services"]] == ["once"]


def test_schedules_secrets_retention(daemon: DaemonProcess) -> None:
    """schedule set (job and run), list, trigger, pause/resume, delete; secrets; retention."""
    sock = daemon.socket_path
    one_line_error(
        hero_proc(sock, "schedule", "set", "bad", "not a cron", "--", "/bin/true"),
        "invalid params",
        "cron",
    )
    made = hero_proc(
        sock, "schedule", "set", "nightly", "0 3 * * *", "--tag", "n", "--env", "A=1",
        "--overlap", "allow", "--", "/bin/echo", "hi",
    )  # fmt: skip
    assert ok(made).startswith("schedule nightly: next fire ")
    run_spec = orjson.dumps({"jobs": [{"key": "a", "command": ["/bin/true"]}]}).decode()
    paused = hero_proc(
        sock, "schedule", "set", "r", "*/5 * * * *", "--run-file", "-", "--paused",
        "--timezone", "UTC", "--tag", "x", stdin=run_spec,
    )  # fmt: skip
    assert ok(paused).strip() == "schedule r: paused"
    mixed = hero_proc(sock, "schedule", "set", "m", "* * * * *", "--run-file", "-", "--env", "A=1")
    assert mixed.returncode == 2
    with daemon.client() as c:
        nightly = c.call("schedule.get", name="nightly")
        assert nightly["job"] == {"command": ["/bin/echo", "hi"], "env": {"A": "1"}, "tags": ["n"]}
        assert nightly["overlap"] == "allow" and nightly["paused"] is False
        r = c.call("schedule.get", name="r")
        assert (r["paused"], r["timezone"], r["run"]["tags"]) == (True, "UTC", ["x"])

    fired = ok(hero_proc(sock, "schedule", "trigger", "nightly")).strip()
    match = re.fullmatch(r"schedule nightly fired: job (\d+)", fired)
    assert match is not None, fired
    listed = columns(ok(hero_proc(sock, "schedule", "list")))
    assert [row[0] for row in listed] == ["nightly", "r"]
    assert listed[0][1] == "0 3 * * *" and listed[0][4:] == ["1", "0", "no"]
    assert listed[1][2] == "-" and listed[1][6] == "yes"
    ok(hero_proc(sock, "schedule", "pause", "nightly"))
    with daemon.client() as c:
        assert c.call("job.get", id=int(match[1]))["command"] == ["/bin/echo", "hi"]
        assert c.call("schedule.get", name="nightly")["paused"] is True
    assert "next fire" in ok(hero_proc(sock, "schedule", "resume", "r"))
    assert "nightly" in ok(hero_proc(sock, "schedule", "get", "nightly"))
    ok(hero_proc(sock, "schedule", "delete", "nightly"))
    with daemon.client() as c:
        schedules = c.call("schedule.list")["schedules"]
        assert [(x["name"], x["paused"]) for x in schedules] == [("r", False)]

    # Secrets: the value from stdin (one newline dropped) or an argument; never listed.
    assert (
        ok(hero_proc(sock, "secret", "set", "pw", stdin="p a s s\n")).strip() == "secret pw saved"
    )
    ok(hero_proc(sock, "secret", "set", "api", "--from-stdin", stdin="k\n\n"))
    ok(hero_proc(sock, "secret", "set", "plain", "v1"))
    assert ok(hero_proc(sock, "secret", "get", "pw")) == "p a s s\n"
    listed_secrets = ok(hero_proc(sock, "secret", "list"))
    assert [row[0] for row in rows_of(listed_secrets)] == ["api", "plain", "pw"]
    assert "p a s s" not in listed_secrets
    used = hero_proc(
        sock, "job", "submit", "--wait", "--logs", "--secret", "PW=pw",
        "--script", 'echo "[$PW]"',
    )  # fmt: skip
    assert ok(used) == "[p a s s]\n"
    ok(hero_proc(sock, "action", "set", "uses", "--secret", "K=api", "--", "/bin/true"))
    assert "deleted" in ok(hero_proc(sock, "secret", "delete", "plain"))
    with daemon.client() as c:
        assert c.call("secret.get", name="api")["value"] == "k\n"
        assert [x["name"] for x in c.call("secret.list")["secrets"]] == ["api", "pw"]
        assert c.call("action.get", name="uses")["env_from_secrets"] == {"K": "api"}

    retained = ok(hero_proc(sock, "retention", "run"))
    assert retained.startswith("deleted 0 jobs, 0 runs, 0 log lines; trimmed ")
    report = ok_json(hero_proc(sock, "--json", "retention", "run"))
    assert set(report) >= {"jobs", "runs", "logs", "log_lines_trimmed", "pages_freed"}
    with daemon.client() as c:
        assert c.call("system.info")["last_retention"] is not None

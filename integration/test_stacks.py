"""Stack files against the real daemon: apply, re-apply, prune, export, reload, bulk verbs."""

from __future__ import annotations

import random
import signal
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from hero_procd.client import Client
from hero_procd.errors import Conflict, InvalidParams
from integration.daemon_proc import DaemonProcess
from integration.helpers import daemon_running, wait_for
from integration.test_cli import hero_proc, ok, ok_json, one_line_error

WEB = """\
stack = "web"

[services.web-db]
command = ["sleep", "60"]
tags = ["web", "data"]

[services.web-app]
command = ["sleep", "61"]
requires = ["web-db"]
tags = ["web"]
start_secs = 0.2

[services.web-app.env]
MODE = "one"

[actions.web-backup]
command = ["echo", "backup"]
tags = ["ops"]

[schedules.web-nightly]
cron = "0 3 * * *"
timezone = "Europe/Brussels"
job = { action = "web-backup" }

[groups.web-io]
max_parallel = 2
"""

JOBS = """\
stack = "jobs"

[actions.jobs-report]
script = "echo report"

[groups.jobs-cpu]
max_parallel = 4
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _names(c: Client) -> dict[str, set[str]]:
    return {
        "services": {s["name"] for s in c.call("service.list")["services"]},
        "actions": {a["name"] for a in c.call("action.list")["actions"]},
        "schedules": {s["name"] for s in c.call("schedule.list")["schedules"]},
        "groups": {g["name"] for g in c.call("group.list")["groups"]},
    }


def _running_pid(c: Client, name: str) -> int:
    def probe() -> int | None:
        st = c.call("service.status", name=name)
        return st["pid"] if st["state"] == "running" else None

    return wait_for(probe, f"{name} running")


def test_apply_reapply_prune_and_export_round_trip_with_two_stacks(
    daemon: DaemonProcess, workdir: Path
) -> None:
    sock = daemon.socket_path
    web = _write(workdir, "web.toml", WEB)
    jobs = _write(workdir, "jobs.toml", JOBS)
    with daemon.client() as c:
        c.call("group.set", name="by-hand", max_parallel=1)  # no stack: never pruned
        first = ok_json(hero_proc(sock, "--json", "apply", "-f", str(web)))
        assert first["summary"]["create"] == 5 and first["changed"]
        assert (
            ok_json(hero_proc(sock, "--json", "apply", "-f", str(jobs)))["summary"]["create"] == 2
        )
        # Re-applying changes nothing and says so.
        again = hero_proc(sock, "apply", "-f", str(web))
        assert "no change (5 unchanged)" in ok(again)
        service = c.call("service.get", name="web-app")
        assert service["stack"] == "web" and service["env"] == {"MODE": "one"}
        assert c.call("action.get", name="jobs-report")["stack"] == "jobs"
        assert c.call("schedule.get", name="web-nightly")["stack"] == "web"
        stacks = {g["name"]: g["stack"] for g in c.call("group.list")["groups"]}
        assert stacks == {"by-hand": None, "web-io": "web", "jobs-cpu": "jobs"}
        updated_at = service["updated_at"]
        assert c.call("service.get", name="web-app")["updated_at"] == updated_at

        # Export writes a file that applies back to no change, for each stack.
        for stack in ("web", "jobs"):
            out = workdir / f"{stack}-export.toml"
            ok(hero_proc(sock, "export", "--stack", stack, "-o", str(out)))
            assert tomllib.loads(out.read_text())["stack"] == stack
            plan = ok_json(hero_proc(sock, "--json", "apply", "-f", str(out)))
            assert not plan["changed"], plan
            assert all(ch["action"] == "unchanged" for ch in plan["changes"]), plan

        # Prune of web deletes only what web no longer declares; jobs and by-hand stay.
        smaller = WEB.split("[actions.web-backup]")[0]
        _write(workdir, "web.toml", smaller)
        kept = ok_json(hero_proc(sock, "--json", "apply", "-f", str(web)))
        orphans = {(ch["kind"], ch["name"]) for ch in kept["changes"] if ch["action"] == "orphan"}
        assert orphans == {
            ("action", "web-backup"),
            ("schedule", "web-nightly"),
            ("group", "web-io"),
        }
        assert "web-backup" in _names(c)["actions"]  # without --prune nothing is deleted
        pruned = ok_json(hero_proc(sock, "--json", "apply", "-f", str(web), "--prune"))
        assert pruned["summary"]["delete"] == 3, pruned
        names = _names(c)
        assert names["actions"] == {"jobs-report"}
        assert names["schedules"] == set()
        assert names["groups"] == {"jobs-cpu", "by-hand"}
        assert names["services"] == {"web-app", "web-db"}

        # An empty web stack with prune deletes its services too; jobs is untouched.
        c.call("service.start", name="web-app", wait_s=10)
        c.call("stack.apply", stack="web", prune=True)
        names = _names(c)
        assert names["services"] == set()
        assert names["actions"] == {"jobs-report"} and names["groups"] == {"jobs-cpu", "by-hand"}

        # The hand-made objects export as "default" and are adopted by applying it.
        doc = c.call("stack.export")
        assert doc == {"stack": "default", "groups": {"by-hand": {"max_parallel": 1}}}
        adopted = c.call("stack.apply", **doc)
        assert [ch["fields"] for ch in adopted["changes"]] == [
            [{"field": "stack", "old": None, "new": "default"}]
        ]
        assert not c.call("stack.apply", **doc)["changed"]


def test_an_object_of_another_stack_is_a_conflict_and_nothing_is_written(
    daemon: DaemonProcess,
) -> None:
    with daemon.client() as c:
        c.call("stack.apply", stack="a", groups={"shared": {"max_parallel": 1}})
        with pytest.raises(Conflict) as caught:
            c.call(
                "stack.apply",
                stack="b",
                actions={"b-only": {"command": ["true"]}},
                groups={"shared": {"max_parallel": 3}},
            )
        assert "belongs to stack a" in str(caught.value)
        assert "b-only" not in _names(c)["actions"]  # the whole plan was refused
        assert c.call("group.list")["groups"][0]["max_parallel"] == 1


def test_dry_run_changes_nothing(daemon: DaemonProcess, workdir: Path) -> None:
    doc = tomllib.loads(WEB)
    with daemon.client() as c:
        plan = c.call("stack.apply", dry_run=True, **doc)
        assert plan["dry_run"] and plan["summary"]["create"] == 5
        assert _names(c) == {
            "services": set(),
            "actions": set(),
            "schedules": set(),
            "groups": set(),
        }
        c.call("stack.apply", **doc)
        c.call("service.start", name="web-db")
        pid = _running_pid(c, "web-db")
        doc["services"]["web-db"]["command"] = ["sleep", "62"]
        plan = c.call("stack.apply", dry_run=True, prune=True, **{**doc, "groups": {}})
        change = next(ch for ch in plan["changes"] if ch["name"] == "web-db")
        assert change["restart"] is True  # it would restart: it runs and its command changed
        assert {ch["name"] for ch in plan["changes"] if ch["action"] == "delete"} == {"web-io"}
        assert c.call("service.get", name="web-db")["command"] == ["sleep", "60"]
        assert c.call("service.status", name="web-db")["pid"] == pid
        assert "web-io" in _names(c)["groups"]


def test_restart_only_when_a_process_field_changes(daemon: DaemonProcess) -> None:
    doc = tomllib.loads(WEB)
    with daemon.client() as c:
        c.call("stack.apply", **doc)
        c.call("service.start", name="web-app", wait_s=10)
        pid = _running_pid(c, "web-app")
        # Tags, restart policy, stop timeout: no restart, same process.
        app = doc["services"]["web-app"]
        app.update(tags=["web", "new"], restart="always", stop_timeout_s=3)
        plan = c.call("stack.apply", **doc)
        change = next(ch for ch in plan["changes"] if ch["name"] == "web-app")
        assert change["action"] == "update" and change["restart"] is False
        assert {f["field"] for f in change["fields"]} == {"tags", "restart", "stop_timeout_s"}
        assert c.call("service.status", name="web-app")["pid"] == pid
        assert c.call("service.status", name="web-app")["tags"] == ["web", "new"]
        # The same through service.update, and `hero-proc service set`.
        result = c.call("service.update", name="web-app", tags=["web"])
        assert result["restarted"] is False
        assert c.call("service.status", name="web-app")["pid"] == pid
        out = ok(hero_proc(daemon.socket_path, "service", "set", "web-app", "--tag", "cli"))
        assert out == "service web-app updated: tags\n"
        assert c.call("service.status", name="web-app")["pid"] == pid
        one_line_error(hero_proc(daemon.socket_path, "service", "set", "web-app"), code=2)
        # env is a process field: restarted, a new pid.
        app["env"] = {"MODE": "two"}
        plan = c.call("stack.apply", **doc)
        change = next(ch for ch in plan["changes"] if ch["name"] == "web-app")
        assert change["restart"] is True
        new_pid = _running_pid(c, "web-app")
        assert new_pid != pid
        result = c.call("service.update", name="web-app", command=["sleep", "63"])
        assert result["restarted"] is True
        assert [f["field"] for f in result["changed"]] == ["command"]
        assert _running_pid(c, "web-app") not in (pid, new_pid)
        # A stopped service is not started by a change.
        c.call("service.stop", name="web-db")
        c.call("service.update", name="web-db", env={"X": "1"})
        assert c.call("service.status", name="web-db")["state"] == "stopped"
        with pytest.raises(InvalidParams) as caught:
            c.call("service.update", name="web-db", restart="sometimes")
        assert caught.value.field == "restart"


def test_bulk_verbs_follow_dependencies(daemon: DaemonProcess, workdir: Path) -> None:
    sock = daemon.socket_path
    doc: dict[str, Any] = {
        "stack": "chain",
        "services": {
            # Names sorted against the order: c requires b requires a.
            "c": {"command": ["sleep", "60"], "requires": ["b"], "tags": ["chain"]},
            "b": {"command": ["sleep", "60"], "requires": ["a"], "tags": ["chain"]},
            "a": {"command": ["sleep", "60"], "tags": ["chain"], "start_secs": 0.2},
            "lone": {"command": ["sleep", "60"], "tags": ["other"]},
        },
    }
    with daemon.client() as c:
        c.call("stack.apply", **doc)
        started = c.call("service.start_many", tag="chain", wait_s=10)["services"]
        assert [s["name"] for s in started] == ["a", "b", "c"]
        assert all(s["ok"] and s["state"] == "running" for s in started), started
        assert c.call("service.status", name="lone")["state"] == "stopped"
        pids = {n: _running_pid(c, n) for n in "abc"}
        restarted = ok_json(hero_proc(sock, "--json", "service", "restart", "--tag", "chain"))
        assert [s["name"] for s in restarted["services"]] == ["a", "b", "c"]
        assert all(_running_pid(c, n) != pids[n] for n in "abc")
        stopped = ok_json(hero_proc(sock, "--json", "service", "stop", "--all"))
        assert [s["name"] for s in stopped["services"]] == ["lone", "c", "b", "a"]
        assert all(s["state"] == "stopped" for s in stopped["services"])
        # Dependents exited before what they require.
        last_exit = {n: c.call("service.events", name=n, limit=1)["events"][0]["at"] for n in "abc"}
        assert last_exit["c"] <= last_exit["b"] <= last_exit["a"], last_exit
        mixed = c.call("service.start_many", names=["lone", "missing"])["services"]
        assert mixed[0]["ok"] and not mixed[1]["ok"] and mixed[1]["error"]["code"] == -32001
        with pytest.raises(InvalidParams):
            c.call("service.start_many", all=True, tag="chain")
        one_line_error(hero_proc(sock, "service", "start", "a", "--all"), "give one of", code=2)


def test_validation_errors_name_file_line_and_field(daemon: DaemonProcess, workdir: Path) -> None:
    sock = daemon.socket_path
    bad = WEB.replace('tags = ["web"]\n', 'tags = ["web"]\nrestart = "sometimes"\n')
    path = _write(workdir, "bad.toml", bad)
    line = bad.splitlines().index('restart = "sometimes"') + 1
    one_line_error(
        hero_proc(sock, "apply", "-f", str(path)),
        f"{path}:{line}: services.web-app.restart: must be one of",
    )
    # A bad value in a sub-table, a syntax error, an unknown key, a missing command.
    cases = {
        WEB.replace('MODE = "one"', "MODE = 1"): ("services.web-app.env.MODE", "MODE = 1"),
        WEB.replace("max_parallel = 2", "max_parallel = 0"): (
            "groups.web-io.max_parallel",
            "max_parallel = 0",
        ),
        WEB.replace('cron = "0 3 * * *"', 'cron = "99 * * * *"'): (
            "schedules.web-nightly.cron",
            'cron = "99 * * * *"',
        ),
        WEB + "\n[services.empty]\ncwd = '/'\n": ("services.empty.command", "[services.empty]"),
        WEB.replace("[groups.web-io]", "[bogus.x]"): ("bogus", "[bogus.x]"),
        WEB.replace("max_parallel = 2", "max_parallel = = 2"): ("", "max_parallel = = 2"),
    }
    for text, (field, marker) in cases.items():
        path.write_text(text)
        want_line = text.splitlines().index(marker) + 1
        message = one_line_error(hero_proc(sock, "apply", "-f", str(path)), f"{path}:{want_line}: ")
        assert field in message, message
    with daemon.client() as c:
        assert _names(c)["services"] == set()  # nothing of any bad file was applied
        assert c.call("system.ping")


def _apply_later(
    daemon: DaemonProcess, doc: dict[str, Any], delay: float, outcomes: list[Any], i: int
) -> None:
    """After `delay`, stack.apply `doc` on a client of its own; its plan or Conflict."""
    time.sleep(delay)
    with daemon.client() as c:
        try:
            outcomes[i] = c.call("stack.apply", **doc)
        except Conflict as exc:
            outcomes[i] = exc


def test_concurrent_applies_are_serialised(daemon: DaemonProcess) -> None:
    rng = random.Random(11)
    with daemon.client() as c0:
        for round_ in range(8):
            stacks = [
                {
                    "stack": f"s{i}",
                    "groups": {
                        f"g{round_}-{i}": {"max_parallel": 1 + i},
                        f"both-{round_}": {"max_parallel": 9},
                    },
                    "actions": {f"a{round_}-{i}": {"command": ["echo", str(i)]}},
                }
                for i in range(2)
            ]
            outcomes: list[Any] = [None, None]

            threads = [
                threading.Thread(
                    target=_apply_later, args=(daemon, stacks[i], rng.uniform(0, 0.01), outcomes, i)
                )
                for i in range(2)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            # Exactly one stack got the object both declare; the other wrote nothing at all.
            won = [i for i in range(2) if isinstance(outcomes[i], dict)]
            assert len(won) == 1, outcomes
            lost = 1 - won[0]
            assert isinstance(outcomes[lost], Conflict)
            names = _names(c0)
            assert f"a{round_}-{won[0]}" in names["actions"]
            assert f"a{round_}-{lost}" not in names["actions"]
            assert f"g{round_}-{lost}" not in names["groups"]


def _log_count(proc: DaemonProcess, text: str) -> int:
    return proc.log().count(text)


def test_config_dir_at_start_and_on_sighup(workdir: Path) -> None:
    conf = workdir / "conf"
    conf.mkdir()
    _write(conf, "web.toml", WEB)
    _write(conf, "jobs.toml", JOBS)
    with daemon_running(workdir, extra_args=["--config-dir", str(conf)]) as proc:
        assert proc.proc is not None
        with proc.client() as c:
            names = _names(c)
            assert names["services"] == {"web-app", "web-db"}
            assert names["actions"] == {"web-backup", "jobs-report"}
            c.call("service.start", name="web-db", wait_s=10)
            pid = _running_pid(c, "web-db")

            # A good change: jobs.toml loses its group (pruned), web-db gets a tag.
            _write(conf, "jobs.toml", JOBS.split("[groups.jobs-cpu]")[0])
            _write(conf, "web.toml", WEB.replace('tags = ["web", "data"]', 'tags = ["web"]'))
            applied = _log_count(proc, "stacks applied")
            proc.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: _log_count(proc, "stacks applied") > applied or None, "the reload")
            assert "jobs-cpu" not in _names(c)["groups"]
            assert c.call("service.status", name="web-db")["tags"] == ["web"]
            assert c.call("service.status", name="web-db")["pid"] == pid  # a tag: no restart

            # A bad file among good ones: nothing of any file is applied, the daemon serves.
            _write(conf, "web.toml", WEB.replace("max_parallel = 2", "max_parallel = 5"))
            _write(conf, "zz-bad.toml", 'stack = "bad"\n[services.x]\nrestart = "never"\n')
            refused = _log_count(proc, "config dir not applied")
            proc.proc.send_signal(signal.SIGHUP)
            wait_for(
                lambda: _log_count(proc, "config dir not applied") > refused or None, "refusal"
            )
            assert "zz-bad.toml:2: services.x.command" in proc.log()
            groups = {g["name"]: g["max_parallel"] for g in c.call("group.list")["groups"]}
            assert groups["web-io"] == 2
            assert c.call("system.ping")
            assert c.call("service.status", name="web-db")["pid"] == pid
            # Fixed, the next SIGHUP applies it.
            (conf / "zz-bad.toml").unlink()
            applied = _log_count(proc, "stacks applied")
            proc.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: _log_count(proc, "stacks applied") > applied or None, "the reload")
            groups = {g["name"]: g["max_parallel"] for g in c.call("group.list")["groups"]}
            assert groups["web-io"] == 5


def test_the_systemd_unit_reloads_its_config_dir() -> None:
    unit = Path(__file__).resolve().parents[1] / "systemd" / "hero-procd.service"
    values: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    (exec_start,) = values["ExecStart"]
    assert "--config-dir /etc/hero-procd/stacks" in exec_start
    assert values["ConfigurationDirectory"] == ["hero-procd/stacks"]
    assert values["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_a_bad_config_dir_at_start_is_logged_and_the_daemon_serves(workdir: Path) -> None:
    conf = workdir / "conf"
    conf.mkdir()
    _write(conf, "jobs.toml", JOBS)
    _write(conf, "web.toml", WEB.replace('cron = "0 3 * * *"', 'cron = "0 3 * *"'))
    with daemon_running(workdir, extra_args=["--config-dir", str(conf)]) as proc:
        with proc.client() as c:
            assert c.call("system.ping")["pong"] is True
            assert _names(c)["actions"] == set()  # jobs.toml is good, but nothing is applied
        line = WEB.splitlines().index('cron = "0 3 * * *"') + 1
        assert f"web.toml:{line}: schedules.web-nightly.cron" in proc.log()


def test_a_created_autostart_service_is_started_and_a_pruned_one_stopped(
    daemon: DaemonProcess,
) -> None:
    doc = {
        "stack": "auto",
        "services": {
            "auto-up": {"command": ["sleep", "60"], "autostart": True, "start_secs": 0.2},
            "auto-down": {"command": ["sleep", "60"]},
        },
    }
    with daemon.client() as c:
        plan = c.call("stack.apply", doc)
        started = {ch["name"]: ch["started"] for ch in plan["changes"]}
        assert started == {"auto-up": True, "auto-down": False}
        pid = _running_pid(c, "auto-up")
        assert c.call("service.status", name="auto-down")["state"] == "stopped"
        # Re-applied, an autostart service that runs is left alone.
        assert not c.call("stack.apply", doc)["changed"]
        assert c.call("service.status", name="auto-up")["pid"] == pid
        plan = c.call("stack.apply", {"stack": "auto", "prune": True})
        assert {ch["name"]: ch["action"] for ch in plan["changes"]} == {
            "auto-down": "delete",
            "auto-up": "delete",
        }
        assert c.call("service.list")["services"] == []
        wait_for(lambda: _gone(pid), f"pid {pid} to end")


def _gone(pid: int) -> bool | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return True if state == "Z" else None

"""Hostile review of stack files, service.update and the bulk verbs, on the real daemon.

Races are driven from threads with randomised timing, each round checked against
what a serial order of the same calls allows; nothing is asserted after a
fixed sleep.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hero_procd.client import Client
from hero_procd.errors import HeroError, InvalidParams
from integration.daemon_proc import DaemonProcess
from integration.helpers import IGNORES_TERM, daemon_running, wait_for
from integration.test_cli import hero_proc


def test_a_dependency_chain_of_1500_services_is_applied_and_walked(daemon: DaemonProcess) -> None:
    # s0 requires s1 requires ... s1499: the cycle check and the bulk verbs' order
    # recursed once per link and answered -32603 (RecursionError) past ~1000.
    n = 1500
    services = {
        f"s{i}": {"command": ["true"], **({"requires": [f"s{i + 1}"]} if i + 1 < n else {})}
        for i in range(n)
    }
    with daemon.client() as c:
        plan = c.call("stack.apply", stack="chain", services=services)
        assert plan["summary"]["create"] == n
        stopped = c.call("service.stop_many", names=["s0"])["services"]
        assert stopped == [{"name": "s0", "ok": True, "state": "stopped", "pid": None}]
        services["s1499"]["requires"] = ["s0"]
        with pytest.raises(InvalidParams) as caught:
            c.call("stack.apply", stack="chain", services=services)
        assert caught.value.field == "services.s0.requires"
        assert "dependency cycle" in str(caught.value)
        assert c.call("service.get", name="s1499")["requires"] == []  # nothing written


# -- the restart rule under races ----------------------------------------------------------


def _env_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = f.read().decode(errors="replace").split("\0")
    return dict(p.split("=", 1) for p in pairs if "=" in p)


def _change_env(daemon: DaemonProcess, verb: str, value: str) -> Any:
    """A process field changed through stack.apply or service.update, on a client of its own."""
    with daemon.client() as c:
        if verb == "apply":
            return c.call("stack.apply", stack="race", services={"x": _svc(value)})
        return c.call("service.update", name="x", env={"V": value})


def _svc(value: str) -> dict[str, Any]:
    return {"command": ["sleep", "60"], "env": {"V": value}, "start_secs": 0}


def _together(*calls: Callable[[], Any], rng: random.Random, spread_s: float = 0.005) -> list[Any]:
    """Run each call on a thread of its own after a random delay; their results."""
    results: list[Any] = [None] * len(calls)

    def run(i: int, delay: float) -> None:
        time.sleep(delay)
        try:
            results[i] = calls[i]()
        except Exception as exc:  # reported by the caller's asserts
            results[i] = exc

    threads = [
        threading.Thread(target=run, args=(i, rng.uniform(0, spread_s))) for i in range(len(calls))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.mark.parametrize("verb", ["apply", "update"])
def test_a_change_racing_a_stop_never_leaves_the_service_running(
    daemon: DaemonProcess, verb: str
) -> None:
    # Serially, change-then-stop and stop-then-change both end stopped. The restart was
    # decided from `is_live` before the owner served it: a stop served in between was
    # undone by the restart (state starting, desired running).
    rng = random.Random(f"stop-{verb}")
    with daemon.client() as c:
        for i in range(20):
            c.call("stack.apply", stack="race", services={"x": _svc(f"{i}")})
            c.call("service.start", name="x")
            wait_for(lambda: _running(c, "x"), "x running")

            def stop() -> Any:
                with daemon.client() as c2:
                    return c2.call("service.stop", name="x")

            change = functools.partial(_change_env, daemon, verb, f"{i}b")
            changed, stopped = _together(change, stop, rng=rng)
            assert isinstance(changed, dict) and isinstance(stopped, dict), (changed, stopped)
            service = c.call("service.get", name="x")
            assert (service["state"], service["desired"]) == ("stopped", "stopped"), (i, service)


@pytest.mark.parametrize("verb", ["apply", "update"])
def test_a_change_racing_a_start_runs_the_new_definition(daemon: DaemonProcess, verb: str) -> None:
    # Serially, either order ends with a process of the new environment. A start that
    # read the old definition just before the change committed was not live yet when
    # the change looked, so nothing restarted it: the old process ran on.
    rng = random.Random(f"start-{verb}")
    with daemon.client() as c:
        for i in range(20):
            c.call("stack.apply", stack="race", services={"x": _svc(f"{i}")})

            def start() -> Any:
                with daemon.client() as c2:
                    return c2.call("service.start", name="x")

            change = functools.partial(_change_env, daemon, verb, f"{i}b")
            changed, started = _together(change, start, rng=rng)
            assert isinstance(changed, dict) and isinstance(started, dict), (changed, started)

            def new_process(want: str = f"{i}b") -> int | None:
                pid = _running(c, "x")
                return pid if pid and _env_of(pid).get("V") == want else None

            wait_for(new_process, f"x running with V={i}b", timeout_s=10)
            c.call("service.stop", name="x")


def _running(c: Client, name: str) -> int | None:
    st = c.call("service.status", name=name)
    return st["pid"] if st["state"] == "running" and st["pid"] else None


def test_an_apply_after_a_prune_keeps_what_it_declares(daemon: DaemonProcess) -> None:
    # v2 prunes x (slow to stop: it ignores SIGTERM); v3, applied once v2's plan is
    # committed and x is stopping, declares x again and answers "unchanged". x was then
    # deleted by v2's carry-out anyway, while v3's group value stood: no serial order
    # of v2 and v3 gives that.
    x = {"command": ["sh", "-c", IGNORES_TERM], "stop_timeout_s": 1.0, "start_secs": 0}
    v1 = {"stack": "p", "services": {"x": x}, "groups": {"p-g": {"max_parallel": 1}}}
    v2 = {"stack": "p", "groups": {"p-g": {"max_parallel": 2}}, "prune": True}
    with daemon.client() as c:
        c.call("stack.apply", v1)
        c.call("service.start", name="x")
        wait_for(lambda: _running(c, "x"), "x running")
        results: list[Any] = []
        pruning = threading.Thread(
            target=lambda: results.append(_call(daemon, "stack.apply", v2)), daemon=True
        )
        pruning.start()
        wait_for(
            lambda: c.call("service.status", name="x")["state"] == "stopping" or None,
            "x stopping (v2 committed)",
        )
        v3 = c.call("stack.apply", {**v1, "prune": True})
        pruning.join(30)
        assert results and results[0]["summary"]["delete"] == 1, results
        # v3 ran after v2 entirely: it re-created x and set the group back.
        assert v3["summary"]["create"] == 1, v3
        assert c.call("service.get", name="x")["stack"] == "p"
        assert c.call("group.list")["groups"][0]["max_parallel"] == 1


def _call(daemon: DaemonProcess, method: str, params: dict[str, Any]) -> Any:
    with daemon.client() as c:
        return c.call(method, params)


# -- bulk verbs ----------------------------------------------------------------------------


def test_a_bulk_start_with_a_failing_service_reports_it_and_skips_its_dependents(
    daemon: DaemonProcess,
) -> None:
    # a <- b <- c (c requires b requires a); b crashes at once; z stands alone. With
    # wait_s, b was answered ok (state backoff) and the CLI exited 0 for it, unlike
    # `service start b --wait`; c then waited 30 s for b before failing.
    short = {"start_secs": 0.2, "tags": ["t"]}
    services = {
        "a": {"command": ["sleep", "60"], **short},
        "b": {"command": ["sh", "-c", "exit 3"], "requires": ["a"], **short},
        "c": {"command": ["sleep", "60"], "requires": ["b"], **short},
        "z": {"command": ["sleep", "60"], **short},
    }
    with daemon.client() as c:
        c.call("stack.apply", stack="bulk", services=services)
        for verb in ("start", "restart"):
            answers = c.call(f"service.{verb}_many", tag="t", wait_s=2)["services"]
            by_name = {s["name"]: s for s in answers}
            assert [s["name"] for s in answers] == ["a", "b", "c", "z"]
            assert by_name["a"]["ok"] and by_name["a"]["state"] == "running", answers
            assert by_name["z"]["ok"] and by_name["z"]["state"] == "running", answers
            assert not by_name["b"]["ok"], answers
            assert "not running after 2s" in by_name["b"]["error"]["message"], answers
            assert not by_name["c"]["ok"], answers
            assert "requires b" in by_name["c"]["error"]["message"], answers
            assert c.call("service.status", name="c")["state"] == "stopped"
        c.call("service.stop_many", all=True)
        result = hero_proc(daemon.socket_path, "service", "start", "--tag", "t", "--wait", "2")
        assert result.returncode == 1, result
        assert "start failed for b, c" in result.stderr, result.stderr
        # A missing requirement: not found for m, and n (which requires m) is not tried.
        c.call(
            "stack.apply",
            stack="bulk2",
            services={
                "m": {"command": ["sleep", "60"], "requires": ["ghost"]},
                "n": {"command": ["sleep", "60"], "requires": ["m"]},
            },
        )
        answers = c.call("service.start_many", names=["n", "m"])["services"]
        assert [(s["name"], s["ok"]) for s in answers] == [("m", False), ("n", False)], answers
        assert answers[0]["error"]["code"] == -32001 and "ghost" in answers[0]["error"]["message"]
        assert "requires m" in answers[1]["error"]["message"], answers


# -- the config dir ------------------------------------------------------------------------

WEB = """\
stack = "web"

[services.web-db]
command = ["sleep", "60"]

[groups.web-io]
max_parallel = 2
"""


def _reloaded(proc: DaemonProcess, marker: str, before: int) -> int | None:
    count = proc.log().count(marker)
    return count if count > before else None


def _sighup_and_wait(proc: DaemonProcess, marker: str) -> str:
    """SIGHUP the daemon and wait for one more log line with `marker`; the log since."""
    assert proc.proc is not None
    log = proc.log()
    before = log.count(marker)
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: _reloaded(proc, marker, before), f"a reload logging {marker!r}")
    return proc.log()[len(log) :]


def _io_limit(c: Client) -> int:
    groups = {g["name"]: g["max_parallel"] for g in c.call("group.list")["groups"]}
    return int(groups["web-io"])


def test_the_config_dir_skips_editor_files_and_refuses_what_it_cannot_read(
    workdir: Path,
) -> None:
    conf = workdir / "conf"
    conf.mkdir()
    (conf / "web.toml").write_text(WEB)
    with daemon_running(workdir, extra_args=["--config-dir", str(conf)]) as proc:
        with proc.client() as c:
            assert _io_limit(c) == 2
            # An editor's files beside the one edited: emacs' lock (a dangling symlink
            # named .#web.toml) and a hidden half-written copy. Both broke every reload.
            (conf / ".#web.toml").symlink_to("root@host.4242:1700000000")
            (conf / ".web.toml.tmp.toml").write_text('stack = "web"\n[services.x\n')
            (conf / "web.toml").write_text(WEB.replace("max_parallel = 2", "max_parallel = 3"))
            _sighup_and_wait(proc, "stacks applied")
            assert _io_limit(c) == 3

            # A named pipe held the one offload thread forever (and so every call that
            # offloads, and the daemon's stop): refused without being opened for long.
            os.mkfifo(conf / "pipe.toml")
            (conf / "web.toml").write_text(WEB.replace("max_parallel = 2", "max_parallel = 4"))
            said = _sighup_and_wait(proc, "config dir not applied")
            assert "pipe.toml: not a regular file" in said, said
            assert _io_limit(c) == 3  # nothing of any file applied
            (conf / "pipe.toml").unlink()

            # Two files of one stack; one object in two stacks; a half-written file.
            bad = {
                'stack = "web"\n': "stack 'web' is declared by",
                'stack = "other"\n[groups.web-io]\nmax_parallel = 9\n': (
                    "other.toml:2: groups.web-io: group web-io belongs to stack web"
                ),
                'stack = "other"\n[services.o]\ncommand = ["sle': "other.toml:3: ",
                'stack = "other"\n[services.o]\ncommand = "sleep"\n': (
                    "other.toml:3: services.o.command: must be a list of strings"
                ),
            }
            for text, problem in bad.items():
                (conf / "other.toml").write_text(text)
                said = _sighup_and_wait(proc, "config dir not applied")
                assert problem in said, (problem, said)
                assert _io_limit(c) == 3
                assert "o" not in {s["name"] for s in c.call("service.list")["services"]}
            (conf / "other.toml").unlink()
            _sighup_and_wait(proc, "stacks applied")
            assert _io_limit(c) == 4
            assert c.call("system.ping")["pong"] is True
        assert "Traceback" not in proc.log()


def test_a_sighup_storm_during_applies_ends_with_the_folder_applied(workdir: Path) -> None:
    conf = workdir / "conf"
    conf.mkdir()
    (conf / "web.toml").write_text(WEB)
    rng = random.Random(7)
    with daemon_running(workdir, extra_args=["--config-dir", str(conf)]) as proc:
        assert proc.proc is not None
        pid = proc.proc.pid
        stop = threading.Event()

        def storm() -> None:
            while not stop.is_set():
                os.kill(pid, signal.SIGHUP)
                time.sleep(rng.uniform(0, 0.003))

        stormer = threading.Thread(target=storm, daemon=True)
        stormer.start()
        try:
            with proc.client() as c:
                for i in range(30):
                    text = WEB.replace("max_parallel = 2", f"max_parallel = {i + 1}")
                    _write_atomically(conf / "web.toml", text)
                    # Another stack applied by hand between the reloads, never pruned by them.
                    c.call("stack.apply", stack="hand", groups={f"h{i}": {"max_parallel": 1}})
                    assert c.call("system.ping")["pong"] is True
        finally:
            stop.set()
            stormer.join(10)
        _write_atomically(conf / "web.toml", WEB.replace("max_parallel = 2", "max_parallel = 77"))
        proc.proc.send_signal(signal.SIGHUP)
        with proc.client() as c:
            wait_for(lambda: _io_limit(c) == 77 or None, "the last file applied")
            groups = {g["name"] for g in c.call("group.list")["groups"]}
            assert {f"h{i}" for i in range(30)} <= groups
            assert {s["name"] for s in c.call("service.list")["services"]} == {"web-db"}
        assert "reload failed" not in proc.log() and "Traceback" not in proc.log()


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# -- huge input ----------------------------------------------------------------------------


def test_a_stack_file_over_the_frame_limit_is_refused_as_such(workdir: Path) -> None:
    # The daemon answers "frame too large" and closes; the client, still sending, got
    # EPIPE and said "cannot reach hero-procd: Broken pipe" (the CLI the same).
    limit = 256 * 1024
    env = {"HERO_PROC_MAX_FRAME": str(limit)}
    lines = ['stack = "huge"']
    for i in range(5000):
        lines.append(f'[actions.a{i}]\ncommand = ["echo", "{"x" * 200}"]')
    text = "\n".join(lines) + "\n"
    assert len(text) > 4 * limit
    path = workdir / "huge.toml"
    path.write_text(text)
    with daemon_running(workdir, env=env) as proc:
        with proc.client() as c:
            with pytest.raises(HeroError) as caught:
                c.call("stack.apply", tomllib.loads(text))
            assert caught.value.code == -32600, caught.value
            assert "frame too large" in str(caught.value)
        result = hero_proc(proc.socket_path, "apply", "-f", str(path))
        assert result.returncode == 1, result
        assert "frame too large" in result.stderr and "cannot reach" not in result.stderr
        with proc.client() as c:
            assert c.call("action.list")["actions"] == []  # nothing applied


def test_a_sighup_during_the_start_up_apply_is_not_lost(workdir: Path) -> None:
    # The daemon cleared any reload asked for during start-up, assuming the start-up
    # apply had served it; a file changed after that apply read it was never applied.
    conf = workdir / "conf"
    conf.mkdir()
    (conf / "a-web.toml").write_text(WEB)  # read first, before the slow file
    # Enough objects that the start-up apply takes a while (the window of the race).
    bulk = ['stack = "bulk"'] + [
        f'[actions.b{i}]\ncommand = ["echo", "{i}"]\ntags = ["t{i}"]' for i in range(3000)
    ]
    (conf / "bulk.toml").write_text("\n".join(bulk) + "\n")
    proc = DaemonProcess(workdir, extra_args=["--config-dir", str(conf)])
    sent: list[bool] = []

    def change_during_start_up() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if "applying the config dir" in proc.log():
                _write_atomically(conf / "a-web.toml", WEB.replace("= 2", "= 42"))
                assert proc.proc is not None
                proc.proc.send_signal(signal.SIGHUP)
                sent.append(True)
                return
            time.sleep(0.002)

    helper = threading.Thread(target=change_during_start_up, daemon=True)
    helper.start()
    proc.start()
    try:
        helper.join(20)
        assert sent
        with proc.client() as c:
            wait_for(lambda: _io_limit(c) == 42 or None, "the file changed during start-up")
    finally:
        assert proc.stop() == 0, proc.log()


# -- mixed verbs on the same objects -------------------------------------------------------


def test_applies_defines_updates_and_deletes_of_one_service_interleaved(
    daemon: DaemonProcess,
) -> None:
    # Whatever the interleaving: every call answers a result or a documented error
    # (never -32603), no process is left behind, and a last apply gives the declared
    # definition, owned by the stack.
    rng = random.Random(3)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        r = random.Random(seed)
        with daemon.client() as c:
            for i in range(12):
                verb = r.choice(["apply", "prune", "define", "update", "delete", "start", "stop"])
                value = f"{seed}-{i}"
                try:
                    if verb == "apply":
                        c.call("stack.apply", stack="mix", services={"m": _svc(value)})
                    elif verb == "prune":
                        c.call("stack.apply", stack="mix", prune=True)
                    elif verb == "define":
                        c.call("service.define", name="m", **_svc(value))
                    elif verb == "update":
                        c.call("service.update", name="m", env={"V": value})
                    elif verb == "delete":
                        c.call("service.delete", name="m")
                    elif verb == "start":
                        c.call("service.start", name="m")
                    else:
                        c.call("service.stop", name="m")
                except HeroError as exc:
                    if exc.code != -32001:  # not found: the service was deleted meanwhile
                        errors.append(exc)
                time.sleep(r.uniform(0, 0.01))

    threads = [threading.Thread(target=worker, args=(rng.randrange(1 << 30),)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with daemon.client() as c:
        c.call("service.stop_many", all=True)
        c.call("stack.apply", stack="mix", services={"m": _svc("last")})
        service = c.call("service.get", name="m")
        assert service["stack"] == "mix" and service["env"] == {"V": "last"}, service
        assert service["state"] == "stopped", service
        assert not _marked_processes(daemon), "a service process outlived its stop"
        c.call("service.start", name="m", wait_s=10)  # the check above can see one
        assert _marked_processes(daemon)
        c.call("service.stop", name="m")


def _marked_processes(daemon: DaemonProcess) -> list[int]:
    """Live processes started by this daemon (its instance mark in their environment)."""
    from hero_procd.engine.executor import instance_id
    from hero_procd.engine.procs import find_marked

    return list(find_marked(instance_id(str(daemon.db_path))))


def test_a_prune_racing_restarts_leaves_no_service_and_no_process(daemon: DaemonProcess) -> None:
    rng = random.Random(5)
    with daemon.client() as c:
        for i in range(10):
            c.call("stack.apply", stack="pr", services={"x": _svc(str(i))})
            c.call("service.start", name="x")
            wait_for(lambda: _running(c, "x"), "x running")

            def restarts() -> list[str]:
                refused = []
                with daemon.client() as c2:
                    for _ in range(3):
                        try:
                            c2.call("service.restart", name="x")
                        except HeroError as exc:
                            assert exc.code == -32001, exc  # not found once pruned
                            refused.append(str(exc))
                return refused

            pruned, _ = _together(
                functools.partial(_call, daemon, "stack.apply", {"stack": "pr", "prune": True}),
                restarts,
                rng=rng,
                spread_s=0.01,
            )
            assert isinstance(pruned, dict) and pruned["summary"]["delete"] == 1, pruned
            assert c.call("service.list")["services"] == []
            assert not _marked_processes(daemon), f"round {i}: a process outlived the prune"


# -- export and apply back -----------------------------------------------------------------

ODD: dict[str, Any] = {
    "stack": "odd",
    "services": {
        "s1": {
            "script": 'echo "q\'uote"\nprintf \'%s\\n\' "$A"\n# ünïcödé ☃\n',
            "interpreter": "bash",
            "env": {"A": "x=y \"z\" 'w' \\ $HOME ${X} \n line\t tab ☃", "EMPTY": "", "d.k": "v"},
            "env_from_secrets": {"TOKEN": "tok"},
            "cwd": "/tmp",
            "health": {"exec": ["true"], "interval_s": 2.5, "retries": 2},
            "after": ["s2"],
            "tags": ["ü", "a b", "[x]"],
            "start_secs": 0,
            "stop_signal": "INT",
            "restart": "always",
            "restart_on_unhealthy": True,
            "start_limit": 0,
        },
        "s2": {
            "command": ["sh", "-c", 'echo "$@"', "--", "a b", "", "ü\n", "'''", '"""'],
            "health": {"tcp": "127.0.0.1:1"},
            "requires": [],
            "stop_timeout_s": 0.25,
        },
    },
    "actions": {
        "a1": {
            "script": 'echo """\n[services.fake]\n"""\n',
            "env": {"X": "1"},
            "timeout_s": 3.5,
            "retries": 2,
            "tags": ["t"],
        },
        "a2": {"command": ["true"]},
    },
    "schedules": {
        "sc1": {
            "cron": "*/5 * * * *",
            "timezone": "America/St_Johns",
            "job": {"action": "a1", "tags": ["x"], "priority": 5},
            "overlap": "queue",
        },
        "sc2": {
            "cron": "0 0 1 1 *",
            "timezone": "Asia/Kathmandu",
            "run": {
                "jobs": [
                    {"key": "k1", "command": ["true"]},
                    {"key": "k2", "action": "a2", "depends_on": ["k1"]},
                ]
            },
            "paused": True,
        },
    },
    "groups": {"g1": {"max_parallel": 3}},
}


def test_export_applies_back_to_no_change_with_every_kind_of_field(
    daemon: DaemonProcess, workdir: Path
) -> None:
    sock = daemon.socket_path
    with daemon.client() as c:
        c.call("secret.set", name="tok", value="s3cr3t-value")
        assert c.call("stack.apply", ODD)["summary"]["create"] == 7
        exported = workdir / "odd.toml"
        assert hero_proc(sock, "export", "--stack", "odd", "-o", str(exported)).returncode == 0
        text = exported.read_text()
        assert "s3cr3t-value" not in text  # secrets by name only
        assert tomllib.loads(text)["services"]["s1"]["env_from_secrets"] == {"TOKEN": "tok"}
        again = hero_proc(sock, "--json", "apply", "-f", str(exported))
        assert again.returncode == 0, again.stderr
        assert '"changed": false' in again.stdout, again.stdout
        # The file's values are the stored ones, field by field.
        for name, declared in ODD["services"].items():
            stored = c.call("service.get", name=name)
            for key, value in declared.items():
                if key == "interpreter":
                    value = [value]
                elif key == "health":
                    value = {**stored["health"], **value}
                assert stored[key] == value, (name, key, stored[key], value)
        # A stack file cannot carry a secret's value: there is no such table.
        bad = workdir / "secret.toml"
        bad.write_text('stack = "odd"\n\n[secrets]\ntok = "v"\n')
        result = hero_proc(sock, "apply", "-f", str(bad))
        assert result.returncode == 1 and f"{bad}:3: secrets: unknown top-level key" in (
            result.stderr
        ), result.stderr


def test_a_prune_never_stops_a_service_that_stays(daemon: DaemonProcess) -> None:
    # db pruned while app (kept, in the file) requires it: the plan said "app unchanged"
    # and deleting db stopped app as a side effect. Now the plan is refused.
    def svc(**fields: Any) -> dict[str, Any]:
        return {"command": ["sleep", "60"], "start_secs": 0.1, **fields}

    with daemon.client() as c:
        c.call("stack.apply", stack="s", services={"db": svc(), "app": svc(requires=["db"])})
        c.call("stack.apply", stack="t", services={"other": svc(requires=["db"])})
        c.call("service.start_many", names=["app", "other"], wait_s=10)
        pids = {n: _running(c, n) for n in ("app", "db", "other")}
        with pytest.raises(InvalidParams) as caught:
            c.call("stack.apply", stack="s", prune=True, services={"app": svc(requires=["db"])})
        assert caught.value.field == "services.app.requires", caught.value
        assert "db" in str(caught.value)
        # Without app in the file, the other stack's service still requires db.
        with pytest.raises(InvalidParams) as caught:
            c.call("stack.apply", stack="s", prune=True)
        assert caught.value.field == "services.db", caught.value
        assert "required by service other" in str(caught.value)
        assert {n: _running(c, n) for n in pids} == pids  # nothing stopped, nothing deleted
        # Once nothing that stays requires it, db goes.
        c.call("stack.apply", stack="t", services={"other": svc()})
        plan = c.call("stack.apply", stack="s", prune=True)
        assert plan["summary"]["delete"] == 2
        assert _running(c, "other") == pids["other"]


def test_nan_and_inf_in_a_stack_file_are_refused_not_turned_into_defaults(
    daemon: DaemonProcess, workdir: Path
) -> None:
    # JSON has no NaN or infinity: orjson sent them as null, and null is "the default",
    # so `start_secs = nan` applied as 1.0 through the CLI (the config dir refused it).
    cases = {
        "start_secs = nan": "services.x.start_secs",
        "stop_timeout_s = -inf": "services.x.stop_timeout_s",
        "health = { exec = ['true'], interval_s = inf }": "services.x.health.interval_s",
        # A date passed as a string through JSON, where the config dir refuses it.
        "tags = ['a', 1979-05-27]": "services.x.tags[1]",
    }
    for line, field in cases.items():
        path = workdir / "nan.toml"
        path.write_text(f'stack = "nan"\n\n[services.x]\ncommand = ["true"]\n{line}\n')
        result = hero_proc(daemon.socket_path, "apply", "-f", str(path))
        assert result.returncode == 1, (line, result.stdout)
        problem = "a TOML date" if "1979" in line else "must be a finite number"
        assert f"{path}:5: {field}: {problem}" in result.stderr, result.stderr
    with daemon.client() as c:
        assert c.call("service.list")["services"] == []


@pytest.mark.parametrize("depth", [300, 5000])
def test_a_stack_file_nested_too_deeply_is_a_bad_file(workdir: Path, depth: int) -> None:
    # 5000: tomllib's RecursionError escaped, and the daemon refused to start over its
    # config dir. 300: parsed, but the CLI could not encode it (orjson's depth limit).
    conf = workdir / "conf"
    conf.mkdir()
    deep = 'stack = "d"\n[services.x]\ncommand = ' + "[" * depth + "]" * depth + "\n"
    (conf / "d.toml").write_text(deep)
    (workdir / "d.toml").write_text(deep)
    with daemon_running(workdir, extra_args=["--config-dir", str(conf)]) as proc:
        result = hero_proc(proc.socket_path, "apply", "-f", str(workdir / "d.toml"))
        message = result.stderr.strip()
        assert result.returncode == 1 and len(message.splitlines()) == 1, result
        assert f"{workdir / 'd.toml'}:3: " in message and "nested too deeply" in message
        with proc.client() as c:
            assert c.call("service.list")["services"] == []
    assert "config dir not applied, nothing changed" in proc.log()
    assert "nested too deeply" in proc.log()


def test_exporting_hand_made_objects_never_names_an_existing_stack(daemon: DaemonProcess) -> None:
    # Hand-made objects were exported as stack "default" even when a stack of that
    # name existed: applying the file with prune deleted that stack's objects.
    with daemon.client() as c:
        c.call("stack.apply", stack="default", groups={"real": {"max_parallel": 1}})
        c.call("stack.apply", stack="default-1", groups={"real1": {"max_parallel": 1}})
        c.call("group.set", name="byhand", max_parallel=2)
        doc = c.call("stack.export")
        assert doc == {"stack": "default-2", "groups": {"byhand": {"max_parallel": 2}}}
        plan = c.call("stack.apply", {**doc, "prune": True})
        assert plan["summary"]["delete"] == 0, plan
        stacks = {g["name"]: g["stack"] for g in c.call("group.list")["groups"]}
        assert stacks == {"real": "default", "real1": "default-1", "byhand": "default-2"}

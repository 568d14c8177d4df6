"""Service supervision against the real daemon: restarts, backoff, stop, dependencies, health."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hero_procd.errors import INVALID_PARAMS, InvalidParams, NotFound
from integration.daemon_proc import DaemonProcess
from integration.helpers import (
    DEADLINE_S,
    IGNORES_TERM,
    define,
    environ,
    group_members,
    is_alive,
    proc_stat,
    read_lines,
    sh,
    start_running,
    status,
    wait_dead,
    wait_for,
    wait_state,
    wait_status,
)

STATUS_KEYS = {
    "name",
    "state",
    "pid",
    "restarts",
    "exit_code",
    "uptime_s",
    "memory_bytes",
    "cpu_percent",
}
# Touches every page of 40 MB, so the memory is resident, then sleeps.
MEMORY_HOG = "import time; data = b'x' * 40_000_000; time.sleep(1000)"


def start_time_s(pid: int) -> float:
    """When the process started, in seconds since boot (/proc/PID/stat field 22)."""
    fields = proc_stat(pid)
    assert fields is not None, f"process {pid} is gone"
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """VmRSS of a process in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


# -- restarts, backoff, policies ---------------------------------------------------


def test_kill9_of_service_restarts_it_after_its_delay(daemon: DaemonProcess) -> None:
    """kill -9 of a running service's process brings it back after restart_delay_s, new pid."""
    with daemon.client() as c:
        define(c, "victim", ["sleep", "1000"], restart="always", restart_delay_s=0.5)
        first = start_running(c, "victim")
        assert first["restarts"] == 0
        killed_at = time.clock_gettime(time.CLOCK_BOOTTIME)
        os.kill(first["pid"], signal.SIGKILL)
        again = wait_status(
            c,
            "victim",
            lambda st: st["state"] == "running" and st["pid"] not in (None, first["pid"]),
            "victim to run again with a new pid",
        )
        assert again["restarts"] == 1
        assert is_alive(again["pid"])
        assert not is_alive(first["pid"])
        assert start_time_s(again["pid"]) - killed_at >= 0.45, "restarted before its delay"


def test_service_dying_at_once_backs_off_then_goes_fatal(daemon: DaemonProcess) -> None:
    """A service that exits before start_secs is backed off (delays doubling) and ends fatal."""
    with daemon.client() as c:
        define(
            c,
            "crasher",
            sh("exit 3"),
            restart="always",
            start_secs=0.5,
            restart_delay_s=0.2,
            restart_delay_max_s=0.5,
            start_limit=3,
            start_window_s=60,
        )
        began = time.monotonic()
        c.call("service.start", name="crasher")
        seen_states: set[str] = set()
        seen_restarts: list[int] = []

        def probe() -> dict[str, Any] | None:
            st = status(c, "crasher")
            seen_states.add(st["state"])
            if not seen_restarts or seen_restarts[-1] != st["restarts"]:
                seen_restarts.append(st["restarts"])
            return st if st["state"] == "fatal" else None

        final = wait_for(probe, "crasher to go fatal")
        elapsed = time.monotonic() - began
    assert "running" not in seen_states
    assert "backoff" in seen_states or len(seen_restarts) > 2, (seen_states, seen_restarts)
    assert seen_restarts == sorted(seen_restarts)
    assert final["restarts"] == 3, final
    assert final["exit_code"] == 3
    assert final["pid"] is None
    # Delays 0.2, 0.4, then capped at 0.5: 1.1 s at least (0.6 s if they did not double).
    assert elapsed >= 1.0, f"went fatal after {elapsed:.2f}s: backoff did not double"


def test_exit_or_stop_during_start_secs_is_noticed_at_once(daemon: DaemonProcess) -> None:
    """An exit, or a stop, within a long start_secs is acted on at once, not when it elapses."""
    with daemon.client(timeout=10) as c:
        define(c, "shortlived", sh("exit 3"), restart="never", start_secs=60)
        c.call("service.start", name="shortlived")
        final = wait_status(
            c,
            "shortlived",
            lambda st: st["state"] == "exited",
            "shortlived to be exited well before its 60 s start_secs",
            timeout_s=10,
        )
        assert final["exit_code"] == 3
        define(c, "slowstart", ["sleep", "1000"], start_secs=60)
        c.call("service.start", name="slowstart")
        pid = wait_status(c, "slowstart", lambda st: st["pid"] is not None, "a pid")["pid"]
        assert status(c, "slowstart")["state"] == "starting"
        stopped = c.call("service.stop", name="slowstart")  # the client gives up after 10 s
        assert stopped["state"] == "stopped"
        assert not is_alive(pid)


def test_restart_never_exits_after_the_process_exits(daemon: DaemonProcess) -> None:
    """restart: never leaves a service `exited` with its exit code once its process ends."""
    with daemon.client() as c:
        define(c, "once", sh("sleep 0.3; exit 2"), restart="never", start_secs=0.1)
        c.call("service.start", name="once")
        final = wait_state(c, "once", "exited")
        assert final["exit_code"] == 2
        assert final["restarts"] == 0
        assert final["pid"] is None
        assert final["uptime_s"] is None


def test_oneshot_exiting_zero_is_exited(daemon: DaemonProcess) -> None:
    """A oneshot service that exits 0 is `exited`, not restarted even with restart: always."""
    with daemon.client() as c:
        define(c, "setup", sh("echo set up"), oneshot=True, restart="always", start_secs=0.1)
        c.call("service.start", name="setup")
        final = wait_state(c, "setup", "exited")
        assert final["exit_code"] == 0
        assert final["restarts"] == 0
        time.sleep(0.5)  # a wrong restart would show within its 0.2 s delay
        assert status(c, "setup")["restarts"] == 0


def test_on_failure_exit_zero_is_exited(daemon: DaemonProcess) -> None:
    """restart: on-failure with exit 0 ends `exited` without a restart."""
    with daemon.client() as c:
        define(c, "clean", sh("sleep 0.3; exit 0"), restart="on-failure", start_secs=0.1)
        c.call("service.start", name="clean")
        final = wait_state(c, "clean", "exited")
        assert final["exit_code"] == 0
        assert final["restarts"] == 0
        time.sleep(0.5)
        assert status(c, "clean")["state"] == "exited"


def test_on_failure_exit_one_is_restarted(daemon: DaemonProcess) -> None:
    """restart: on-failure with exit 1 restarts the service (restarts grows, new pids)."""
    with daemon.client() as c:
        define(
            c,
            "flaky",
            sh("echo up; sleep 0.3; exit 1"),
            restart="on-failure",
            start_secs=0.1,
            restart_delay_s=0.1,
            start_limit=0,
        )
        pids: set[int] = set()

        def probe() -> dict[str, Any] | None:
            st = status(c, "flaky")
            if st["pid"] is not None:
                pids.add(st["pid"])
            return st if st["restarts"] >= 2 else None

        c.call("service.start", name="flaky")
        st = wait_for(probe, "flaky to be restarted twice")
        assert st["state"] != "exited"
        wait_for(lambda: True if len(pids) >= 2 else None, "a second pid of flaky")
        stopped = c.call("service.stop", name="flaky")
        assert stopped["state"] == "stopped"
        ups = [ln["text"] for ln in c.call("service.logs", name="flaky")["lines"]]
        assert ups.count("up") >= 2, ups


# -- stopping ----------------------------------------------------------------------


def test_stop_escalates_to_sigkill_after_stop_timeout(daemon: DaemonProcess) -> None:
    """A service that ignores SIGTERM is killed with SIGKILL after stop_timeout_s."""
    with daemon.client() as c:
        define(c, "stubborn", sh(IGNORES_TERM), stop_timeout_s=1.0)
        pid = start_running(c, "stubborn")["pid"]
        began = time.monotonic()
        stopped = c.call("service.stop", name="stubborn")
        elapsed = time.monotonic() - began
        assert stopped["state"] == "stopped", stopped
        assert stopped["signal"] == signal.SIGKILL, stopped
        assert elapsed >= 0.9, f"stopped after {elapsed:.2f}s, before its stop timeout"
        wait_for(lambda: True if not group_members(pid) else None, "the stubborn group to die")


def test_stop_leaves_no_process_of_the_group(daemon: DaemonProcess) -> None:
    """Stopping a service kills the background children in its process group too."""
    with daemon.client() as c:
        define(c, "forker", sh("sleep 1000 & exec sleep 1000"))
        pgid = start_running(c, "forker")["pid"]
        assert os.getpgid(pgid) == pgid, "a service leads its own process group"
        members = wait_for(
            lambda: (lambda m: m if len(m) >= 2 else None)(group_members(pgid)),
            "the background child to appear",
        )
        stopped = c.call("service.stop", name="forker")
        assert stopped["state"] == "stopped"
        assert stopped["signal"] == signal.SIGTERM, stopped
        for pid in members:
            wait_dead(pid, "a process of the stopped service's group")
        assert group_members(pgid) == []


def test_stop_signal_int_is_the_signal_received(daemon: DaemonProcess, workdir: Path) -> None:
    """stop_signal INT is what the service receives on stop (it traps INT and TERM apart)."""
    got = workdir / "got"
    script = (
        f'trap "echo INT > {got}; exit 0" INT; trap "echo TERM > {got}; exit 0" TERM; '
        "while :; do sleep 0.1; done"
    )
    with daemon.client() as c:
        define(c, "intr", sh(script), stop_signal="INT", stop_timeout_s=10)
        start_running(c, "intr")
        stopped = c.call("service.stop", name="intr")
        assert stopped["state"] == "stopped"
        assert got.read_text().strip() == "INT"
        assert stopped["exit_code"] == 0, stopped


# -- dependencies --------------------------------------------------------------------


def test_requires_starts_required_first_and_stop_stops_dependent_first(
    daemon: DaemonProcess, workdir: Path
) -> None:
    """`requires`: the required one is running before the dependent starts; stop goes reverse."""
    log = workdir / "events"
    pidfile = workdir / "base.pid"
    base = (
        f'trap "echo stop base >> {log}; exit 0" TERM; echo $$ > {pidfile}; '
        f"echo start base >> {log}; while :; do sleep 0.1; done"
    )
    app = (
        f'trap "echo stop app >> {log}; exit 0" TERM; '
        f'if kill -0 "$(cat {pidfile})"; then echo start app, base alive >> {log}; '
        f"else echo start app, base missing >> {log}; fi; while :; do sleep 0.1; done"
    )
    with daemon.client() as c:
        define(c, "base", sh(base), start_secs=0.3)
        define(c, "app", sh(app), requires=["base"])
        started = c.call("service.start", name="app", wait_s=DEADLINE_S)
        assert started["state"] == "running", started
        base_st = status(c, "base")
        assert base_st["state"] == "running", base_st
        assert is_alive(base_st["pid"])
        assert int(pidfile.read_text()) == base_st["pid"]
        assert read_lines(log) == ["start base", "start app, base alive"]

        stopped = c.call("service.stop", name="base")
        assert stopped["state"] == "stopped", stopped
        app_st = status(c, "app")
        assert app_st["state"] == "stopped", app_st
        assert app_st["desired"] == "stopped", app_st
        assert not is_alive(base_st["pid"]) and not is_alive(started["pid"])
    assert read_lines(log) == ["start base", "start app, base alive", "stop app", "stop base"]


def test_dependency_cycle_is_rejected_at_define(daemon: DaemonProcess) -> None:
    """A cycle through requires/after (or a self-dependency) is refused with -32602."""
    with daemon.client() as c:
        define(c, "one", ["sleep", "1000"])
        define(c, "two", ["sleep", "1000"], requires=["one"])
        define(c, "three", ["sleep", "1000"], after=["two"])
        with pytest.raises(InvalidParams) as err:
            define(c, "one", ["sleep", "1000"], after=["three"])
        assert err.value.code == INVALID_PARAMS
        assert "cycle" in err.value.problem
        assert c.call("service.get", name="one")["after"] == [], "the rejected spec was stored"
        with pytest.raises(InvalidParams) as err:
            define(c, "self", ["sleep", "1000"], requires=["self"])
        assert err.value.code == INVALID_PARAMS
        with pytest.raises(NotFound):
            c.call("service.get", name="self")


# -- health checks -----------------------------------------------------------------


def test_failing_exec_health_check_degrades_and_restarts(
    daemon: DaemonProcess, workdir: Path
) -> None:
    """A failing exec check marks a service degraded; with restart_on_unhealthy it restarts."""
    calm_flag, strict_flag = workdir / "calm-ok", workdir / "strict-ok"
    calm_flag.touch()
    strict_flag.touch()

    def check(flag: Path) -> dict[str, Any]:
        return {"exec": ["test", "-e", str(flag)], "interval_s": 0.2, "retries": 2}

    with daemon.client() as c:
        define(c, "calm", ["sleep", "1000"], health=check(calm_flag))
        define(c, "strict", ["sleep", "1000"], health=check(strict_flag), restart_on_unhealthy=True)
        calm = start_running(c, "calm")
        strict = start_running(c, "strict")
        assert calm["health"] == "healthy" and strict["health"] == "healthy"
        calm_flag.unlink()
        strict_flag.unlink()

        degraded = wait_status(c, "calm", lambda st: st["health"] == "degraded", "calm degraded")
        assert degraded["state"] == "running" and degraded["pid"] == calm["pid"], degraded
        assert degraded["restarts"] == 0

        wait_status(c, "strict", lambda st: st["restarts"] >= 1, "strict to be restarted")
        wait_dead(strict["pid"], "the unhealthy process")
        # Its new process has not passed a check yet: starting, not running.
        st = status(c, "strict")
        assert st["state"] in ("backoff", "starting"), st
        strict_flag.touch()
        healed = wait_state(c, "strict", "running")
        assert healed["health"] == "healthy"
        assert healed["pid"] not in (None, strict["pid"])
        assert status(c, "calm")["restarts"] == 0


def test_tcp_health_check_gates_running(daemon: DaemonProcess) -> None:
    """A tcp check nothing answers keeps a service starting; once a listener is up it runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))  # reserved but not listening: connections are refused
        port = sock.getsockname()[1]
        check = {"tcp": f"127.0.0.1:{port}", "interval_s": 0.2, "timeout_s": 2}
        with daemon.client() as c:
            define(c, "gated", ["sleep", "1000"], start_secs=0.1, health=check)
            define(c, "fine", ["sleep", "1000"], start_secs=0.1, health={"exec": ["true"]})
            c.call("service.start", name="gated")
            assert start_running(c, "fine")["health"] == "healthy"
            until = time.monotonic() + 2.0
            while time.monotonic() < until:
                st = status(c, "gated")
                assert st["state"] == "starting", st
                time.sleep(0.1)
            assert st["pid"] is not None and is_alive(st["pid"])
            sock.listen()
            running = wait_state(c, "gated", "running")
            assert running["health"] == "healthy"
            assert running["pid"] == st["pid"], "the process was restarted instead of waited on"


# -- logs, delete, status ------------------------------------------------------------


def test_service_logs_return_its_output(daemon: DaemonProcess) -> None:
    """service.logs returns what the service wrote to stdout and stderr."""
    with daemon.client() as c:
        define(c, "talker", sh("echo hello out; echo hello err >&2; exec sleep 1000"))
        c.call("service.start", name="talker")

        def probe() -> list[dict[str, Any]] | None:
            lines: list[dict[str, Any]] = c.call("service.logs", name="talker")["lines"]
            return lines if len(lines) >= 2 else None

        lines = wait_for(probe, "two log lines of talker")
        got = {(ln["stream"], ln["text"]) for ln in lines}
        assert got == {("stdout", "hello out"), ("stderr", "hello err")}
        seqs = [ln["seq"] for ln in lines]
        assert seqs == sorted(seqs) and len(set(seqs)) == 2
        page = c.call("service.logs", name="talker", after_seq=seqs[0])
        assert [ln["seq"] for ln in page["lines"]] == seqs[1:]


def test_delete_of_running_service_stops_it_first(daemon: DaemonProcess) -> None:
    """service.delete of a running service kills its process and removes it."""
    with daemon.client() as c:
        define(c, "doomed", sh("sleep 1000 & exec sleep 1000"))
        pid = start_running(c, "doomed")["pid"]
        members = wait_for(
            lambda: (lambda m: m if len(m) >= 2 else None)(group_members(pid)),
            "the background child to appear",
        )
        assert c.call("service.delete", name="doomed") == {"deleted": 1}
        for member in members:
            wait_dead(member, "a process of the deleted service")
        with pytest.raises(NotFound):
            c.call("service.get", name="doomed")
        with pytest.raises(NotFound):
            c.call("service.status", name="doomed")
        names = [s["name"] for s in c.call("service.status_all")["services"]]
        assert "doomed" not in names


def test_status_figures_match_proc(daemon: DaemonProcess) -> None:
    """memory_bytes sums the group's VmRSS; uptime_s grows; pid is the real group leader."""
    command = [*sh('"$0" -c "$1" & exec "$0" -c "$1"'), sys.executable, MEMORY_HOG]
    with daemon.client() as c:
        define(c, "hog", command)
        pid = start_running(c, "hog")["pid"]
        env = environ(pid)
        assert "HERO_PROC_SERVICE=hog" in env
        assert os.getpgid(pid) == pid

        def group_rss() -> int | None:
            members = group_members(pid)
            sizes = [rss_bytes(m) for m in members]
            return sum(sizes) if len(sizes) == 2 and min(sizes) > 40_000_000 else None

        total = wait_for(group_rss, "both hogs to hold their memory")
        assert len(group_members(pid)) == 2

        def sampled() -> dict[str, Any] | None:
            st = status(c, "hog")
            mem = st["memory_bytes"]
            if mem is None:
                return None
            now_total = group_rss() or total
            return st if 0.8 * now_total <= mem <= 1.25 * now_total else None

        st = wait_for(sampled, "memory_bytes to match the group's VmRSS sum")
        # The leader alone holds about half the group: its figure alone would not pass.
        assert st["memory_bytes"] > 1.5 * rss_bytes(pid)
        assert st["pid"] == pid
        cpu = st["cpu_percent"]  # None until a second sample
        assert cpu is None or 0.0 <= cpu <= 100.0 * (os.cpu_count() or 1), cpu
        first = status(c, "hog")["uptime_s"]
        time.sleep(1.0)
        second = status(c, "hog")["uptime_s"]
        assert second >= first + 0.9, (first, second)
        stopped = c.call("service.stop", name="hog")
        assert (stopped["pid"], stopped["uptime_s"]) == (None, None)
        assert stopped["memory_bytes"] is None, "a stopped service shows its last memory figure"


def test_status_all_lists_every_service_with_documented_keys(daemon: DaemonProcess) -> None:
    """status_all shows each service (running, idle, exited) with the documented keys."""
    with daemon.client() as c:
        define(c, "b-idle", ["sleep", "1000"])
        define(c, "a-run", ["sleep", "1000"])
        define(c, "c-done", ["true"], oneshot=True, start_secs=0.1)
        running = start_running(c, "a-run")
        c.call("service.start", name="c-done")
        wait_state(c, "c-done", "exited")
        services = c.call("service.status_all")["services"]
    assert [s["name"] for s in services] == ["a-run", "b-idle", "c-done"]
    for s in services:
        assert set(s) >= STATUS_KEYS, s
    by_name = {s["name"]: s for s in services}
    run = by_name["a-run"]
    assert run["state"] == "running" and run["pid"] == running["pid"] and is_alive(run["pid"])
    assert isinstance(run["uptime_s"], float | int) and run["uptime_s"] >= 0
    idle = by_name["b-idle"]
    assert (idle["state"], idle["pid"], idle["uptime_s"], idle["restarts"]) == (
        "stopped",
        None,
        None,
        0,
    )
    done = by_name["c-done"]
    assert (done["state"], done["exit_code"], done["pid"]) == ("exited", 0, None)

"""Services across daemon restarts: kill -9 and SIGTERM of the real daemon, autostart order."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from hero_procd.client import Client
from hero_procd.engine.executor import instance_id
from integration.daemon_proc import DaemonProcess
from integration.helpers import (
    DEADLINE_S,
    IGNORES_TERM,
    all_pids,
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
    wait_state,
    wait_status,
)

SLEEPER = ["sleep", "1000"]


def service_processes(daemon: DaemonProcess, name: str) -> list[int]:
    """Live processes of this daemon's instance whose environment names the service `name`."""
    marks = {f"HERO_PROC_SERVICE={name}", f"HERO_PROC_INSTANCE={instance_id(str(daemon.db_path))}"}
    return [pid for pid in all_pids() if is_alive(pid) and marks <= set(environ(pid))]


def pgid_of(pid: int) -> int | None:
    """The process group of `pid`, or None if it is gone."""
    fields = proc_stat(pid)
    return int(fields[2]) if fields is not None else None


def running_pids(c: Client, names: list[str]) -> dict[str, int]:
    """Wait until each service runs; their pids."""
    return {name: wait_state(c, name, "running")["pid"] for name in names}


def test_kill9_of_daemon_then_restart_runs_each_service_once(workdir: Path) -> None:
    """After kill -9 and a restart, old service processes are gone and each runs once, anew."""
    daemons: list[DaemonProcess] = []

    def start_daemon() -> DaemonProcess:
        daemons.append(DaemonProcess(workdir).start())
        return daemons[-1]

    try:
        first = start_daemon()
        with first.client() as c:
            define(c, "auto", SLEEPER, autostart=True)
            define(c, "hand1", SLEEPER)
            define(c, "hand2", SLEEPER)
            define(c, "idle", SLEEPER)
        assert first.stop() == 0
        second = start_daemon()
        with second.client() as c:
            assert wait_state(c, "auto", "running")["pid"] is not None
            start_running(c, "hand1")
            start_running(c, "hand2")
            old = running_pids(c, ["auto", "hand1", "hand2"])
            assert status(c, "idle")["state"] == "stopped"
            watched = c.call("system.info")["watchdog"] is not None
        for name, pid in old.items():
            assert service_processes(second, name) == [pid]
        second.kill()
        for name, pid in old.items():
            if watched:  # cgroups: the watchdog kills them as the daemon dies
                wait_dead(pid, f"the process of {name} after its daemon's kill -9")
            else:  # process groups: they outlive the daemon, recovery kills them
                assert is_alive(pid), "a service died with its daemon: nothing left to recover"

        third = start_daemon()
        with third.client() as c:
            for name, pid in old.items():
                wait_dead(pid, f"the old process of {name}")
            new = running_pids(c, ["auto", "hand1", "hand2"])
            for name in old:
                assert new[name] != old[name], name
                assert is_alive(new[name])
                assert service_processes(third, name) == [new[name]], name
            idle = status(c, "idle")
            assert idle["state"] == "stopped" and service_processes(third, "idle") == []
            time.sleep(0.5)  # a second copy started late would show up here
            for name in old:
                assert service_processes(third, name) == [new[name]], name
    finally:
        for daemon in daemons:
            daemon.stop()


def test_sigterm_of_daemon_stops_services_and_start_brings_them_back(workdir: Path) -> None:
    """A graceful stop ends every service process; the next start runs those that should run."""
    first = DaemonProcess(workdir).start()
    second: DaemonProcess | None = None
    try:
        with first.client() as c:
            define(c, "auto", SLEEPER, autostart=True)
            define(c, "hand", sh("sleep 1000 & exec sleep 1000"))
            define(c, "stubborn", sh(IGNORES_TERM), stop_timeout_s=1.0)
            define(c, "off", SLEEPER)
            hand = start_running(c, "hand")["pid"]
            stubborn = start_running(c, "stubborn")["pid"]
            start_running(c, "off")
            c.call("service.stop", name="off")
            groups = {pgid: group_members(pgid) for pgid in (hand, stubborn)}
            assert len(groups[hand]) == 2, "hand's background child is missing"
        began = time.monotonic()
        assert first.stop(signal.SIGTERM) == 0, first.log()
        elapsed = time.monotonic() - began
        assert elapsed >= 0.9, f"the daemon stopped after {elapsed:.2f}s: it did not wait"
        for pgid, members in groups.items():
            for pid in members:
                wait_dead(pid, f"a process of group {pgid}")
            assert group_members(pgid) == []

        second = DaemonProcess(workdir).start()
        with second.client() as c:
            new = running_pids(c, ["auto", "hand", "stubborn"])
            assert new["hand"] != hand and new["stubborn"] != stubborn
            for name, pid in new.items():
                procs = service_processes(second, name)
                assert pid in procs, name
                assert all(pgid_of(p) in (pid, None) for p in procs), (name, procs)
            assert status(c, "off")["state"] == "stopped"
            assert service_processes(second, "off") == []
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_autostart_follows_after_order(workdir: Path) -> None:
    """Autostart services start in `after` order: each starts once its predecessor runs."""
    log = workdir / "events"

    def script(name: str, before: str | None) -> list[str]:
        seen = (
            f'if [ -e {workdir}/{before}.up ]; then saw="{before} up"; '
            f'else saw="{before} not up"; fi; '
            if before
            else 'saw="first"; '
        )
        # Marks itself up only after a moment: a successor started too early cannot see it.
        return sh(
            f'{seen}echo "start {name}: $saw" >> {log}; sleep 0.2; touch {workdir}/{name}.up; '
            "exec sleep 1000"
        )

    first = DaemonProcess(workdir).start()
    second: DaemonProcess | None = None
    try:
        with first.client() as c:
            # Names sort against the order, so a start by name alone would be caught.
            opts = {"autostart": True, "start_secs": 0.5}
            define(c, "alpha", script("alpha", "mid"), after=["mid"], **opts)
            define(c, "mid", script("mid", "zulu"), after=["zulu"], **opts)
            define(c, "zulu", script("zulu", None), **opts)
        assert first.stop() == 0
        second = DaemonProcess(workdir).start()
        with second.client() as c:
            running_pids(c, ["alpha", "mid", "zulu"])
        assert read_lines(log) == ["start zulu: first", "start mid: zulu up", "start alpha: mid up"]
    finally:
        first.stop()
        if second is not None:
            second.stop()


def restart_to_new_pid(c: Client, name: str) -> dict[str, Any]:
    """service.restart, then wait for its new process; the status then."""
    old = {status(c, name)["pid"], None}
    c.call("service.restart", name=name, wait_s=DEADLINE_S)
    return wait_status(c, name, lambda s: s["pid"] not in old, f"a new pid of {name}")


def test_manual_restarts_are_counted_apart_kept_across_daemon_restarts_and_reset_by_delete(
    workdir: Path,
) -> None:
    """service.restart of a live service counts in `manual_restarts` (never in `restarts`);
    a restart of a stopped one is a start; the count is stored, and goes with a delete."""
    daemons: list[DaemonProcess] = []
    try:
        daemons.append(DaemonProcess(workdir).start())
        with daemons[-1].client() as c:
            define(c, "web", SLEEPER)
            c.call("service.restart", name="web", wait_s=DEADLINE_S)  # stopped: a start
            first = wait_state(c, "web", "running")
            assert (first["restarts"], first["manual_restarts"]) == (0, 0)
            for n in (1, 2):
                st = restart_to_new_pid(c, "web")
                assert (st["restarts"], st["manual_restarts"]) == (0, n)
            assert c.call("service.get", name="web")["manual_restarts"] == 2
            listed = c.call("service.status_all")["services"]
            assert [s["manual_restarts"] for s in listed if s["name"] == "web"] == [2]
        assert daemons[-1].stop() == 0
        daemons.append(DaemonProcess(workdir).start())
        with daemons[-1].client() as c:
            assert status(c, "web")["manual_restarts"] == 2  # stored, not in memory
            start_running(c, "web")
            st = restart_to_new_pid(c, "web")
            assert st["manual_restarts"] == 3
            c.call("service.delete", name="web")
            define(c, "web", SLEEPER)
            assert status(c, "web")["manual_restarts"] == 0
    finally:
        for daemon in daemons:
            daemon.stop()

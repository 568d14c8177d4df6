"""The watchdog (engine/watchdog.py): a daemon that dies without a stop takes its cells along.

Real daemons, real processes. kill -9 of the daemon: a running job's process, its
setsid and double-forked escapees and a running service's process all die without
any daemon being started again, and the watchdog is gone too. A graceful stop
(SIGTERM, or SIGINT to the daemon's process group as a terminal's Ctrl-C) ends
the watchdog without a kill: the services' stop logic still runs.
"""

from __future__ import annotations

import os
import random
import signal
import time
from functools import partial
from pathlib import Path

import pytest

from hero_procd.client import Client
from hero_procd.engine.executor import instance_id
from hero_procd.engine.procs import find_marked
from integration.daemon_proc import DaemonProcess
from integration.helpers import (
    define,
    finish,
    info,
    is_alive,
    proc_stat,
    start_running,
    status,
    wait_dead,
    wait_for,
    wait_running,
    wait_state,
)

CGROUPS = {"HERO_PROC_CONTAINMENT": "auto"}
# Prints the pid of a setsid escapee and of a double-forked orphan, each with an empty
# environment (no instance mark: only their cgroup ties them to the daemon).
UNMARKED = "setsid env -i sleep 300 & echo $!; sh -c 'env -i sleep 300 & echo $!'"
KILLED_LINE = "hero-proc-watchdog: the daemon ended without a stop"


def start_cgroup_daemon(workdir: Path, started: list[DaemonProcess]) -> DaemonProcess:
    """A daemon with cgroups (skipped where this host has no writable cgroup v2 tree)."""
    daemon = DaemonProcess(workdir, env=CGROUPS)
    started.append(daemon.start())
    with daemon.client() as c:
        if info(c)["containment"] != "cgroup2":
            pytest.skip(f"no writable cgroup v2 tree here: {info(c).get('reason')}")
    return daemon


def printed_pids(lines: list[dict[str, object]], count: int) -> list[int] | None:
    """The first `count` pids printed in these log lines, once there are that many."""
    pids = [int(str(ln["text"])) for ln in lines if str(ln["text"]).strip().isdigit()]
    return pids[:count] if len(pids) >= count else None


def job_pids(c: Client, job_id: int, count: int = 2) -> list[int]:
    """The pids a job printed."""
    return wait_for(
        lambda: printed_pids(c.call("job.logs", id=job_id)["lines"], count), "the job's pids"
    )


def service_pids(c: Client, name: str, count: int = 2) -> list[int]:
    """The pids a service printed."""
    return wait_for(
        lambda: printed_pids(c.call("service.logs", name=name)["lines"], count),
        f"the pids of {name}",
    )


def cgroup_of(pid: int) -> str:
    """The cgroup v2 path of a live process."""
    text = Path(f"/proc/{pid}/cgroup").read_text()
    return next(ln[3:] for ln in text.splitlines() if ln.startswith("0::"))


def fd_targets(pid: int) -> set[str]:
    """What the open descriptors of `pid` point at (`pipe:[123]`, paths)."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return out


def test_kill_9_kills_the_jobs_escapees_and_services_without_a_restart(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    daemon = start_cgroup_daemon(workdir, started)
    with daemon.client() as c:
        dog = info(c)["watchdog"]
        assert dog is not None and dog["program"] == "/bin/sh", dog
        root = info(c)["cgroup"]
        assert dog["cgroup"] == root
        wd = dog["pid"]
        # In a session of its own, in no cell (the daemon's cgroup), fds 0-2 only.
        assert os.getsid(wd) == wd and os.getpgid(wd) == wd
        assert daemon.proc is not None and cgroup_of(wd) == cgroup_of(daemon.proc.pid)
        assert sorted(os.listdir(f"/proc/{wd}/fd")) == ["0", "1", "2"]

        job_id = c.call("job.submit", script=f"{UNMARKED}; echo $$; sleep 300")["id"]
        job = job_pids(c, job_id, 3)  # two escapees, then the job's shell itself
        assert wait_running(c, job_id)["pid"] == job[2]
        define(c, "svc", ["sh", "-c", f"{UNMARKED}; exec sleep 300"])
        svc_main = start_running(c, "svc")["pid"]
        svc = service_pids(c, "svc")
    victims = [*job, svc_main, *svc]
    assert all(is_alive(p) for p in victims)

    daemon.kill()
    for pid in victims:
        wait_dead(pid, "a process of a daemon killed by -9 (no daemon started again)")
    wait_dead(wd, "the watchdog after its kill")
    wait_for(lambda: True if KILLED_LINE in daemon.log() else None, "the watchdog's line")
    # It killed, it did not remove: the cells are there, empty, until the next start.
    cells = [e.path for e in os.scandir(root) if e.is_dir()]
    assert len(cells) == 2, cells
    for cell in cells:
        assert "populated 0" in Path(cell, "cgroup.events").read_text()

    started.append(daemon.start())
    with daemon.client() as c:
        assert finish(c, job_id)["status"] == "lost"
        assert not any(os.path.exists(p) for p in cells)
        new_dog = info(c)["watchdog"]
        assert new_dog is not None and new_dog["pid"] != wd
    assert daemon.stop() == 0


def test_graceful_stop_ends_the_watchdog_reaped_without_a_kill(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    """SIGTERM: the job is stopped by the daemon (SIGTERM first, as before), the watchdog
    exits on `bye` and is reaped by the daemon (no zombie left), nothing is killed by it."""
    daemon = start_cgroup_daemon(workdir, started)
    flag = workdir / "job-term"
    with daemon.client() as c:
        wd = info(c)["watchdog"]["pid"]
        script = f"trap 'echo TERM > {flag}; exit 0' TERM; echo $$; while :; do sleep 0.1; done"
        job_id = c.call("job.submit", script=script)["id"]
        (job,) = job_pids(c, job_id, 1)
    assert daemon.stop() == 0
    assert flag.read_text() == "TERM\n", "the job was stopped by the daemon, with SIGTERM"
    assert not is_alive(job)
    # Reaped by the daemon before it exited: no process (not even a zombie) left.
    assert proc_stat(wd) is None, proc_stat(wd)
    log = daemon.log()
    assert KILLED_LINE not in log and "watchdog" not in log, log


def test_sigint_to_the_daemons_group_stops_gracefully_not_by_the_watchdog(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    """Ctrl-C of a foreground daemon (SIGINT to its process group), with the watchdog
    signalled too: the daemon stops its service through its stop logic (SIGTERM, which
    the service records), the watchdog kills nothing and exits on `bye`."""
    daemon = start_cgroup_daemon(workdir, started)
    flag = workdir / "svc-term"
    with daemon.client() as c:
        wd = info(c)["watchdog"]["pid"]
        script = f"trap 'echo TERM > {flag}; exit 0' TERM; while :; do sleep 0.1; done"
        define(c, "graceful", ["sh", "-c", script], stop_timeout_s=30)
        svc = start_running(c, "graceful")["pid"]
        # What a terminal would also send it, were it in the daemon's group; it ignores them.
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            os.kill(wd, sig)
        assert status(c, "graceful")["state"] == "running"
    assert daemon.proc is not None
    os.killpg(daemon.proc.pid, signal.SIGINT)
    assert daemon.proc.wait(30) == 0
    assert flag.read_text() == "TERM\n", "the service was stopped with SIGTERM, not killed"
    assert not is_alive(svc)
    assert proc_stat(wd) is None
    log = daemon.log()
    assert KILLED_LINE not in log and "watchdog" not in log, log


def test_a_job_does_not_inherit_the_watchdogs_pipe(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    daemon = start_cgroup_daemon(workdir, started)
    with daemon.client() as c:
        wd = info(c)["watchdog"]["pid"]
        pipe = os.readlink(f"/proc/{wd}/fd/0")
        assert pipe.startswith("pipe:[")
        assert daemon.proc is not None and pipe in fd_targets(daemon.proc.pid), "write end"
        job_id = c.call("job.submit", script="echo $$; exec sleep 300")["id"]
        (job,) = job_pids(c, job_id, 1)
        define(c, "svc", ["sleep", "300"])
        svc = start_running(c, "svc")["pid"]
        for pid in (job, svc):
            assert pipe not in fd_targets(pid), (pid, fd_targets(pid))
        c.call("job.cancel", id=job_id)
        assert finish(c, job_id)["status"] == "cancelled"
        c.call("service.stop", name="svc")
        wait_state(c, "svc", "stopped")
    assert daemon.stop() == 0


def test_a_watchdog_killed_from_outside_is_started_again_and_still_kills(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    daemon = start_cgroup_daemon(workdir, started)
    with daemon.client() as c:
        first = info(c)["watchdog"]
        assert first["restarts"] == 0
        os.kill(first["pid"], signal.SIGKILL)
        again = wait_for(
            lambda: d if (d := info(c)["watchdog"])["restarts"] == 1 else None,
            "the watchdog to be started again",
        )
        assert again["pid"] != first["pid"] and is_alive(again["pid"])
        wait_dead(first["pid"], "the killed watchdog (reaped)")
        assert proc_stat(first["pid"]) is None, "reaped by the daemon, no zombie"
        job_id = c.call("job.submit", script="echo $$; exec sleep 300")["id"]
        (job,) = job_pids(c, job_id, 1)
    assert "the watchdog ended while the daemon runs; started it again" in daemon.log()
    daemon.kill()
    wait_dead(job, "a job of a daemon killed by -9, under the second watchdog")
    wait_dead(again["pid"], "the second watchdog after its kill")


def nothing_left(daemon: DaemonProcess, root: str) -> bool | None:
    """True once no process carries the daemon's mark and every cell under `root` is empty."""
    if find_marked(instance_id(str(daemon.db_path))):
        return None
    cells = [e.path for e in os.scandir(root) if e.is_dir()]
    full = [p for p in cells if "populated 1" in Path(p, "cgroup.events").read_text()]
    return True if not full else None


def test_kill_9_at_a_random_moment_of_a_spawn_burst_leaves_nothing(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    """kill -9 while jobs are being spawned (a random moment, three times): whatever was
    spawned, every process marked as the daemon's is gone and every cell is empty,
    without a daemon started again."""
    daemon = DaemonProcess(workdir, env=CGROUPS, extra_args=["--max-parallel", "200"])
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for round_ in range(3):
        started.append(daemon.start())
        with daemon.client() as c:
            if info(c)["containment"] != "cgroup2":
                pytest.skip("no writable cgroup v2 tree here")
            root = info(c)["cgroup"]
            script = "sleep 300 & setsid sleep 300 & exec sleep 300"
            c.call("job.submit_batch", jobs=[{"script": script}] * 60)
        time.sleep(rng.uniform(0.0, 0.4))
        daemon.kill()
        what = f"round {round_} (seed {seed})"

        wait_for(partial(nothing_left, daemon, root), f"every process to be gone, {what}")


def test_process_groups_have_no_watchdog(workdir: Path, started: list[DaemonProcess]) -> None:
    """The fallback has no watchdog (README, Containment): system.info says so."""
    daemon = DaemonProcess(workdir, env={"HERO_PROC_CONTAINMENT": "process-group"})
    started.append(daemon.start())
    with daemon.client() as c:
        assert info(c)["watchdog"] is None
    assert daemon.stop() == 0

"""A hostile review of the /bin/true spawn path (fdwatch, batched cell ends, spawn trips).

Each attack drives a real daemon with real processes; races repeat with randomised
timing (the seed is in every message) and assert outcomes, never that "nothing
happened" after a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from hero_procd.client import Client
from hero_procd.engine.executor import instance_id
from hero_procd.engine.procs import find_marked
from hero_procd.errors import HeroError
from integration.daemon_proc import DaemonProcess
from integration.helpers import (
    ESCAPEES,
    all_logs,
    cgroup_daemon,
    daemon_running,
    define,
    finish,
    kill_leftovers,
    sh,
    start_running,
    submit,
    wait_for,
    wait_running,
)

SEED = int(os.environ.get("HERO_TEST_SEED") or random.randrange(1 << 30))


def _printer(rng: random.Random, n_out: int, n_err: int) -> tuple[str, list[str], list[str]]:
    """A script printing numbered lines on both pipes in one of several shapes; the lines
    it must leave on each stream."""
    out = [f"o{i}" for i in range(n_out)]
    err = [f"e{i}" for i in range(n_err)]
    shape = rng.choice(["plain", "partial", "err_closed_early", "grandchild", "interleaved"])
    seq_out = f"i=0; while [ $i -lt {n_out} ]; do echo o$i; i=$((i+1)); done"
    seq_err = f"i=0; while [ $i -lt {n_err} ]; do echo e$i >&2; i=$((i+1)); done"
    if shape == "plain":
        script = f"{seq_out}; {seq_err}"
    elif shape == "partial":  # the last line of each pipe has no newline
        script = f"{seq_out}; {seq_err}; printf tail-o; printf tail-e >&2"
        out.append("tail-o")
        err.append("tail-e")
    elif shape == "err_closed_early":  # EOF on stderr long before stdout's
        script = f"{seq_err}; exec 2>&-; sleep 0.0{rng.randint(1, 9)}; {seq_out}"
    elif shape == "grandchild":  # a grandchild prints, then holds both pipes past the end
        script = f"({seq_out}; {seq_err}; exec sleep 300) & sleep 0.{rng.randint(1, 3)}"
        # The grandchild may not have printed everything when the leader ends (then it
        # is killed): only its lines up to the kill are promised; checked as a prefix.
    else:  # both pipes at once
        script = f"({seq_out}) & ({seq_err}) & wait"
    return script, out, err


def _in_order(got: list[str], want: list[str]) -> bool:
    """`got` is `want` with some lines left out, in `want`'s order."""
    it = iter(want)
    return all(line in it for line in got)


@pytest.mark.parametrize("buffer_lines", [400, 60_000])
def test_no_line_lost_under_backpressure_pipe_shapes_and_batches(
    tmp_path: Path, buffer_lines: int
) -> None:
    """16 jobs at a time print a lot on both pipes (partial last lines, a pipe closed long
    before the other, a grandchild holding the pipes, both at once) into a log buffer so
    small that every capture is paused and resumed many times: every line is stored, in
    order, per stream; every job succeeds, once."""
    rng = random.Random(SEED)
    env = {"HERO_PROC_LOG_BUFFER_LINES": str(buffer_lines), "HERO_PROC_CONTAINMENT": "auto"}
    with (
        daemon_running(tmp_path, extra_args=["--max-parallel", "16"], env=env) as proc,
        proc.client() as c,
    ):
        drops = 0
        for round_ in range(8):
            wanted: dict[int, tuple[str, list[str], list[str]]] = {}
            for _ in range(16):
                n_out, n_err = rng.choice([0, 1, 300, 2500]), rng.choice([0, 1, 300, 1500])
                script, out, err = _printer(rng, n_out, n_err)
                wanted[submit(c, command=sh(script))] = (script, out, err)
            for job_id, (script, out, err) in wanted.items():
                job = finish(c, job_id, 120)
                where = f"seed {SEED} round {round_} job {job_id}: {script}"
                assert job["status"] == "succeeded", (where, job)
                assert job["attempt"] == 1, (where, job)
                lines = all_logs(c, job_id)
                got_out = [ln["text"] for ln in lines if ln["stream"] == "stdout"]
                got_err = [ln["text"] for ln in lines if ln["stream"] == "stderr"]
                seqs = [ln["seq"] for ln in lines]
                assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), where
                dropped = job["dropped_log_lines"]
                if "exec sleep 300" in script and dropped == 0:
                    # Killed at the leader's end: what it printed until then, whole.
                    assert got_out == out[: len(got_out)], (where, got_out[-3:])
                    assert got_err == err[: len(got_err)], (where, got_err[-3:])
                    if len(got_err) < len(err):  # it printed stderr after stdout
                        assert got_out == out, (where, len(got_out), len(out))
                elif dropped == 0:
                    assert got_out == out, (where, len(got_out), len(out), got_out[-3:])
                    assert got_err == err, (where, len(got_err), len(err), got_err[-3:])
                else:  # the buffer overflowed: what is not stored is counted
                    assert _in_order(got_out, out) and _in_order(got_err, err), where
                    total = len(got_out) + len(got_err) + dropped
                    if "exec sleep 300" in script:
                        assert total <= len(out) + len(err), (where, total, dropped)
                    else:  # counted by the time the job is seen finished
                        assert total == len(out) + len(err), (where, total, dropped)
                drops += bool(dropped)
        if buffer_lines < 2500:  # lines of one read overflow it: the counted path ran
            assert drops > 0, f"seed {SEED}: no line was dropped"


def _kill_pending_or_dead(pid: int) -> bool:
    """Whether process `pid` is gone, exiting, or has a SIGKILL pending (one read)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
    except (FileNotFoundError, ProcessLookupError):
        return True
    state = fields["State"].split()[0]
    pending = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return state not in ("S", "D") or bool(pending & (1 << (signal.SIGKILL - 1)))


def test_escapees_have_their_kill_before_the_job_end_is_written() -> None:
    """A job whose main process leaves a setsid escapee and a double-forked orphan, then
    exits at a random moment: when job.wait says it ended, each of them is dead or has
    its SIGKILL pending (the batched cell end ran before the end was written)."""
    rng = random.Random(SEED)
    with cgroup_daemon() as proc, proc.client() as c:
        pending: list[tuple[int, float]] = []
        for i in range(60):
            pause = rng.choice([0, 0, 0.001, 0.01, 0.03])
            job_id = submit(c, command=sh(f"{ESCAPEES}; sleep {pause}"))
            pending.append((job_id, pause))
            if len(pending) < rng.randint(1, 8) and i < 59:
                continue
            for job_id, pause in pending:
                job = finish(c, job_id, 60)
                lines = [ln["text"] for ln in all_logs(c, job_id)]
                pids = [int(t) for t in lines if t.isdigit()]
                where = f"seed {SEED} job {job_id} pause {pause}: {job}"
                assert job["status"] == "succeeded", where
                for pid in pids:
                    assert _kill_pending_or_dead(pid), (where, pid)
            pending = []


def test_cancel_during_the_spawn_trip_one_outcome_each(tmp_path: Path) -> None:
    """Batches of 8 jobs submitted at once, one or two cancelled at a random moment (while
    the claim is being spawned, or just after): each job ends once, cancelled or
    succeeded, with one attempt; a cancelled one that had started leaves no process."""
    rng = random.Random(SEED)
    with daemon_running(tmp_path, extra_args=["--max-parallel", "16"]) as proc, proc.client() as c:
        for round_ in range(60):
            items = [{"command": sh(f"echo $$; sleep 0.0{rng.randint(0, 5)}")} for _ in range(8)]
            ids = [int(x) for x in c.call("job.submit_batch", jobs=items)["submitted"]]
            time.sleep(rng.choice([0, 0, 0.0005, 0.002, 0.01]))
            victims = rng.sample(ids, rng.randint(1, 2))
            answers = {}
            for v in victims:
                try:
                    answers[v] = c.call("job.cancel", id=v)
                except Exception as exc:  # ended already: an InvalidState
                    answers[v] = str(exc)
            for job_id in ids:
                job = finish(c, job_id, 60)
                where = f"seed {SEED} round {round_} job {job_id} {answers}: {job}"
                assert job["status"] in ("succeeded", "cancelled"), where
                if job_id not in victims:
                    assert job["status"] == "succeeded", where
                assert job["attempt"] <= 1, where
                texts = [ln["text"] for ln in all_logs(c, job_id)]
                for t in texts:
                    if t.isdigit():
                        assert _kill_pending_or_dead(int(t)), where


def _daemon_fds(pid: int) -> tuple[int, int, int]:
    """The daemon's open descriptors, the descriptors its epoll sets watch and the
    watches of its inotify descriptor, leaving out that inotify descriptor (the
    daemon's one, made on first use: see contain._Inotify) and its entry in the loop,
    and files of /proc and /sys open for a read at this moment."""
    count, watched, inotify_watches = 0, 0, 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as fh:
                info = fh.read().splitlines()
        except FileNotFoundError:
            continue
        if target.startswith(("/proc/", "/sys/")):
            continue  # a file being read at this moment (the sampler's, a cell's)
        if target == "anon_inode:inotify":
            inotify_watches += sum(1 for line in info if line.startswith("inotify wd:"))
            watched -= 1  # the loop's reader of it
            continue
        count += 1
        if target == "anon_inode:[eventpoll]":
            watched += sum(1 for line in info if line.startswith("tfd:"))
    return count, watched, inotify_watches


def _diff(before: list[str], after: list[str]) -> str:
    gone, new = list(before), []
    for kind in after:
        if kind in gone:
            gone.remove(kind)
        else:
            new.append(kind)
    return f"gone {gone}, new {new}"


def _fd_kinds(pid: int) -> list[str]:
    kinds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            kinds.append(os.readlink(f"/proc/{pid}/fd/{fd}").split("[")[0].rsplit("/", 1)[-1])
        except FileNotFoundError:
            continue
    return sorted(kinds)


def test_fds_and_epoll_set_return_to_start_after_jobs_and_service_restarts(
    tmp_path: Path,
) -> None:
    """2,000 jobs (some printing, some failing to start, some cancelled, some timed out)
    and 50 restarts of a printing service: afterwards the daemon's descriptors and what
    its epoll sets watch are what they were before."""
    rng = random.Random(SEED)
    with daemon_running(tmp_path, extra_args=["--max-parallel", "16"]) as proc, proc.client() as c:
        assert proc.proc is not None
        pid = proc.proc.pid
        # What is made once, on first use (the inotify descriptor of cells that must be
        # waited for, a reader thread's database connection...): made before counting.
        for command, extra in ((["true"], {}), (sh("sleep 5"), {"timeout_s": 0.05})):
            finish(c, submit(c, command=command, **extra))
        define(c, "warm", sh("echo up; exec sleep 300"))
        start_running(c, "warm")
        c.call("service.stop", name="warm")
        c.call("service.delete", name="warm")
        start = _daemon_fds(pid)
        kinds = _fd_kinds(pid)
        commands = [
            ["true"],
            sh("echo out; echo err >&2"),
            ["/nonexistent/binary"],
            sh("sleep 5"),
        ]
        ids: list[int] = []
        for _ in range(20):
            items: list[dict[str, Any]] = []
            for _ in range(100):
                kind = rng.choice(commands)
                item: dict[str, Any] = {"command": kind}
                if kind == ["true"] and rng.random() < 0.1:
                    item["cwd"] = "/nonexistent/dir"
                if kind == sh("sleep 5"):
                    item["timeout_s"] = rng.choice([0.05, 0.2])
                items.append(item)
            batch = [int(x) for x in c.call("job.submit_batch", jobs=items)["submitted"]]
            for job_id in rng.sample(batch, 5):
                with contextlib.suppress(HeroError):  # ended already
                    c.call("job.cancel", id=job_id)
            ids.extend(batch)
            c.call("job.wait_all", ids=batch, timeout_s=120)
        chatty = "i=0; while [ $i -lt 200 ]; do echo $i; i=$((i+1)); done; sleep 300"
        define(c, "chatty", sh(chatty))
        start_running(c, "chatty")
        for _ in range(50):
            c.call("service.restart", name="chatty")
            time.sleep(rng.uniform(0, 0.02))
        start_running(c, "chatty")
        c.call("service.stop", name="chatty")
        c.call("service.delete", name="chatty")
        progress = c.call("job.wait_all", ids=ids, timeout_s=60)
        assert progress["ended"] == len(ids), progress
        # Pipes of killed services are read for up to 2 s after their end (a grandchild may
        # hold them): the count comes back to its start within a generous bound.
        got = wait_for(
            lambda: (lambda now: now if now == start else None)(_daemon_fds(pid)),
            f"fds back to {start} (seed {SEED}, now {_daemon_fds(pid)}: "
            f"{_diff(kinds, _fd_kinds(pid))})",
            30.0,
        )
        assert got == start


@pytest.mark.parametrize("buffer_lines", [400, 200_000])
def test_sigterm_while_16_jobs_print_stores_every_line(tmp_path: Path, buffer_lines: int) -> None:
    """The daemon stops (SIGTERM) while 16 jobs print as fast as they can: the lines of
    each first attempt are stored without a gap, at least up to the last line it noted
    as written to its pipe; after a restart each job runs again to its end."""
    rng = random.Random(SEED)
    for round_ in range(3):
        work = tmp_path / f"r{round_}"
        work.mkdir()
        env = {"HERO_PROC_LOG_BUFFER_LINES": str(buffer_lines)}
        proc = DaemonProcess(work, extra_args=["--max-parallel", "16"], env=env).start()
        ids: list[int] = []
        try:
            with proc.client() as c:
                for k in range(16):
                    mark = work / f"m{k}"
                    note = work / f"n{k}"
                    script = (
                        f"[ -e {mark} ] && exit 0; : > {mark}; i=0; "
                        f"while :; do echo $i; echo $i > {note}.t && mv {note}.t {note}; "
                        f"i=$((i+1)); done"
                    )
                    ids.append(submit(c, command=sh(script)))
                for job_id in ids:
                    wait_running(c, job_id)
                time.sleep(rng.uniform(0.05, 0.4))
            assert proc.stop() == 0, proc.log()
            proc.start()
            with proc.client() as c:
                for k, job_id in enumerate(ids):
                    job = finish(c, job_id, 60)
                    where = f"seed {SEED} round {round_} job {job_id}: {job}"
                    assert job["status"] == "succeeded", where
                    got = [ln["text"] for ln in all_logs(c, job_id)]
                    dropped = job["dropped_log_lines"]
                    if dropped == 0:
                        assert got == [str(i) for i in range(len(got))], (where, got[-3:])
                    else:  # what is not stored is counted
                        assert _in_order(got, [str(i) for i in range(int(got[-1]) + 1)]), where
                        assert len(got) + dropped >= int(got[-1]) + 1, (where, dropped)
                    note = work / f"n{k}"
                    if note.exists():
                        noted = int(note.read_text())
                        assert len(got) + dropped > noted, (where, len(got), dropped, noted)
                        assert int(got[-1]) >= noted, (where, got[-1], noted)
        finally:
            proc.stop()


def _service_lines(c: Client, name: str) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    after = 0
    while True:
        page = c.call("service.logs", name=name, after_seq=after, limit=10_000)
        if not page["lines"]:
            return lines
        lines.extend(page["lines"])
        after = page["next_seq"]


def test_service_printing_through_restarts_pauses_and_delete(tmp_path: Path) -> None:
    """A service that prints without pause, into a log buffer small enough to pause its
    capture, restarted 50 times at random moments: each life's stored lines are its
    numbers in order, without a gap unless lines were counted as dropped. Deleted while
    printing and defined again: none of the old lives' lines shows up under the new one."""
    rng = random.Random(SEED)
    env = {"HERO_PROC_LOG_BUFFER_LINES": "4000"}
    with daemon_running(tmp_path, env=env) as proc, proc.client() as c:
        printer = 'i=0; while :; do echo "$$-$i"; i=$((i+1)); done'
        define(c, "loud", sh(printer), start_secs=0.02)
        start_running(c, "loud")
        for _ in range(50):
            time.sleep(rng.uniform(0.0, 0.03))
            c.call("service.restart", name="loud")
        start_running(c, "loud")
        c.call("service.stop", name="loud")
        wait_for(
            lambda: True if c.call("service.status", name="loud")["state"] != "running" else None,
            "loud to stop",
        )
        # The last life's pipes are read for a moment after its end: wait until quiet.
        counts = [-1]

        def settled() -> list[dict[str, Any]] | None:
            lines = _service_lines(c, "loud")
            if len(lines) == counts[-1]:
                return lines
            counts.append(len(lines))
            time.sleep(0.3)
            return None

        lines = wait_for(settled, "loud's lines to settle")
        dropped = c.call("service.get", name="loud")["dropped_log_lines"]
        seqs = [ln["seq"] for ln in lines]
        assert seqs == sorted(set(seqs)), f"seed {SEED}: seqs repeat or go back"
        by_life: dict[str, list[int]] = {}
        for ln in lines:
            pid, _, n = ln["text"].partition("-")
            by_life.setdefault(pid, []).append(int(n))
        assert len(by_life) >= 2, by_life.keys()
        for pid, ns in by_life.items():
            if dropped == 0:
                assert ns == list(range(len(ns))), f"seed {SEED} life {pid} lost lines"
            else:
                assert ns == sorted(set(ns)), f"seed {SEED} life {pid} out of order"

        for round_ in range(5):
            start_running(c, "loud")
            time.sleep(rng.uniform(0.0, 0.1))
            assert c.call("service.delete", name="loud")["deleted"] == 1
            define(
                c,
                "loud",
                sh(
                    f'i=0; while [ $i -lt 100 ]; do echo "new{round_}-$i"; '
                    f"i=$((i+1)); done; exec sleep 300"
                ),
                start_secs=0.02,
            )
            start_running(c, "loud")

            def new_ones() -> list[dict[str, Any]] | None:
                got = _service_lines(c, "loud")
                return got if len(got) >= 100 else None

            got = wait_for(new_ones, "the new definition's 100 lines")
            texts = [ln["text"] for ln in got]
            assert texts == [f"new{round_}-{i}" for i in range(100)], (
                f"seed {SEED} round {round_}: {[t for t in texts if 'new' not in t][:5]}"
            )
            c.call("service.stop", name="loud")
            wait_for(
                lambda: (
                    True if c.call("service.status", name="loud")["state"] != "running" else None
                ),
                "loud to stop",
            )
            assert c.call("service.delete", name="loud")["deleted"] == 1
            define(c, "loud", sh(printer), start_secs=0.02)


def test_kill_9_mid_spawn_trip_with_process_groups_leaves_nothing_after_recovery(
    tmp_path: Path,
) -> None:
    """Process groups (no cgroup to sweep): kill -9 at a random moment while batches of
    jobs (each leaving a setsid escapee) are spawned and their pids written in one unit
    per loop step. The next daemon's recovery kills every process the dead one started,
    written pid or not, and settles each job once (lost, or run again to success)."""
    rng = random.Random(SEED)
    env = {"HERO_PROC_CONTAINMENT": "process-group"}
    proc = DaemonProcess(tmp_path, env=env, extra_args=["--max-parallel", "64"])
    instance = instance_id(str(proc.db_path))
    go = tmp_path / "second-life"
    try:
        for round_ in range(10):
            if go.exists():
                go.unlink()
            proc.start()
            with proc.client() as c:
                script = f"[ -e {go} ] && exit 0; setsid sleep 300 & exec sleep 300"
                ids = c.call("job.submit_batch", jobs=[{"script": script}] * 48)["submitted"]
                time.sleep(rng.uniform(0.0, 0.3))
            proc.kill()
            left = find_marked(instance)
            go.touch()
            proc.start()
            for pid in left:
                wait_for(
                    partial(_dead, pid),
                    f"seed {SEED} round {round_}: pid {pid} of the killed daemon to die",
                    30.0,
                )
            with proc.client() as c:
                for job_id in ids:
                    job = finish(c, job_id, 60)
                    assert job["status"] in ("lost", "succeeded"), (SEED, round_, job)
            assert find_marked(instance) == [], (SEED, round_)
            assert proc.stop() == 0, proc.log()
    finally:
        proc.stop()
        kill_leftovers(proc.db_path)


def _dead(pid: int) -> bool | None:
    return True if not _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

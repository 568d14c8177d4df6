"""A cgroup cell's release: rmdir first (the kernel refuses it while a process is left),
cgroup.kill and a wait only then. Real cgroups of this host; skipped where none can be made."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest

from hero_procd.engine import contain, procs


@pytest.fixture
def cgroups() -> Iterator[contain.CgroupContainment]:
    try:
        c = contain.make_containment(contain.CGROUP2, None, f"t{uuid.uuid4().hex[:8]}")
    except contain.ContainmentError as exc:
        pytest.skip(f"no writable cgroup v2 tree here: {exc}")
    assert isinstance(c, contain.CgroupContainment)
    yield c
    asyncio.run(c.close())
    assert not os.path.exists(c.root), "a cell was left behind"


def _spawn(cell: contain.Cell, argv: list[str]) -> procs.Child:
    child = cell.spawn(argv, procs.child_base_env(), None, capture=False)
    return child


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_an_empty_cell_is_removed(cgroups: contain.CgroupContainment) -> None:
    """A leader that ended (reaped): release removes the directory."""
    for _ in range(20):
        cell = cgroups.cell("job-1-1")
        assert isinstance(cell, contain.CgroupCell)
        child = _spawn(cell, ["/bin/true"])
        os.waitpid(child.pid, 0)
        os.close(child.pidfd)
        assert os.path.isdir(cell.path)
        asyncio.run(cell.release())
        assert not os.path.exists(cell.path)


def test_a_cell_still_holding_processes_is_killed_then_removed(
    cgroups: contain.CgroupContainment,
) -> None:
    """rmdir is refused while a process (here one that left its session) is in the cell:
    release kills it and removes the cell once empty."""
    cell = cgroups.cell("job-2-1")
    assert isinstance(cell, contain.CgroupCell)
    # The leader starts a detached sleeper in a new session and exits at once.
    child = _spawn(cell, ["/bin/sh", "-c", "setsid sleep 600 </dev/null >/dev/null 2>&1 &"])
    os.waitpid(child.pid, 0)
    os.close(child.pidfd)
    escapees = cell.pids()
    assert escapees, "the sleeper should still be in the cell"
    asyncio.run(cell.release())
    assert not os.path.exists(cell.path)
    for pid in escapees:
        assert not _alive(pid)


async def _end(cells: list[contain.CgroupCell]) -> None:
    """What the executor does at its leaders' exits, then waits for at its end."""
    for cell in cells:
        cell.leader_ended()
    for cell in cells:
        await cell.ended()


def test_cells_whose_leader_ended_are_removed_in_one_batch(
    cgroups: contain.CgroupContainment,
) -> None:
    """leader_ended on cells whose leaders ended (not yet reaped, as the executor calls
    it): the cells that ended meanwhile are removed together; release has nothing left."""
    cells: list[contain.CgroupCell] = []
    children = []
    for i in range(8):
        cell = cgroups.cell(f"job-{i}-1")
        assert isinstance(cell, contain.CgroupCell)
        children.append(_spawn(cell, ["/bin/true"]))
        cells.append(cell)
    for child in children:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, a zombie
    asyncio.run(_end(cells))
    for cell, child in zip(cells, children, strict=True):
        assert not os.path.exists(cell.path)
        assert not cell.held()
        procs.reap(child.pid)
        os.close(child.pidfd)
        asyncio.run(cell.release())


def test_leader_ended_kills_an_escapee_before_ended_returns(
    cgroups: contain.CgroupContainment,
) -> None:
    """A process left in the cell (a setsid sleeper) is killed by the batch of its
    leader's end; release then waits for the cell to empty and removes it."""
    cell = cgroups.cell("job-3-1")
    assert isinstance(cell, contain.CgroupCell)
    child = _spawn(cell, ["/bin/sh", "-c", "setsid sleep 600 </dev/null >/dev/null 2>&1 &"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    escapees = cell.pids()
    assert escapees, "the sleeper should still be in the cell"
    asyncio.run(_end([cell]))
    procs.reap(child.pid)
    os.close(child.pidfd)
    assert cell.held()
    asyncio.run(cell.release())
    assert not os.path.exists(cell.path)
    for pid in escapees:
        assert not _alive(pid)

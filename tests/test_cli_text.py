"""The `hero-proc status` table: restarts asked for by service.restart are shown apart."""

from __future__ import annotations

from hero_procd.cli import text


def _service(name: str, restarts: int, manual: int | None) -> dict[str, object]:
    return {
        "name": name,
        "state": "running",
        "health": None,
        "pid": 42,
        "uptime_s": 5.0,
        "restarts": restarts,
        "manual_restarts": manual,
        "memory_bytes": None,
        "cpu_percent": None,
    }


def test_restarts_show_manual_ones_apart() -> None:
    assert text.restarts(_service("a", 3, 0)) == "3"
    assert text.restarts(_service("a", 3, None)) == "3"
    assert text.restarts(_service("a", 0, 2)) == "0 (+2)"
    assert text.restarts({"name": "old daemon"}) == "0"


def test_status_table_carries_manual_restarts() -> None:
    shown = text.status_table(
        {"services": [_service("db", 1, 0), _service("web", 4, 2)]}, colour=False
    )
    lines = shown.splitlines()
    assert lines[0].split() == [
        "NAME", "STATE", "HEALTH", "PID", "UPTIME", "RESTARTS", "MEMORY", "CPU"
    ]  # fmt: skip
    assert "4 (+2)" in lines[2] and lines[2].startswith("web")
    assert len({len(line) for line in lines}) == 1  # aligned

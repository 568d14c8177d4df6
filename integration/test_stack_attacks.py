"""Hostile review of stack files, service.update and the bulk verbs, on the real daemon.

Races are driven from threads with randomised timing, each round checked against
what a serial order of the same calls allows; nothing is asserted after a
fixed sleep.
"""

from __future__ import annotations

import pytest

from hero_procd.errors import InvalidParams
from integration.daemon_proc import DaemonProcess


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

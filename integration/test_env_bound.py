"""An env value the kernel could never give a child is refused when it is sent.

The kernel takes one environment string ("NAME=value" and its NUL) of at most
MAX_ARG_STRLEN = 128 KiB; secret.set already refuses a longer secret. Before, a job's
or service's env past it was accepted and every spawn then failed (E2BIG).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from hero_procd.errors import InvalidParams
from integration.daemon_proc import DaemonProcess
from integration.helpers import finish, submit

LIMIT = 32 * 4096


def test_env_value_over_the_kernel_bound_is_refused_at_submit(daemon: DaemonProcess) -> None:
    rng = random.Random()
    name = "BIG"
    over = "x" * (LIMIT - len(name) - 1 + rng.randint(0, 4096))  # NAME=value+NUL > LIMIT
    with daemon.client() as c:
        calls: list[tuple[str, dict[str, Any]]] = [
            ("job.submit", {"command": ["true"], "env": {name: over}}),
            ("service.define", {"name": "big", "command": ["sleep", "100"], "env": {name: over}}),
            ("run.submit", {"jobs": [{"key": "a", "command": ["true"], "env": {name: over}}]}),
        ]
        for method, params in calls:
            with pytest.raises(InvalidParams) as err:
                c.call(method, params)
            assert err.value.code == -32602, (method, err.value)
            assert "env" in str(err.value.data), (method, err.value.data)
        # The largest value that fits is taken and reaches the child.
        fits = "y" * (LIMIT - len(name) - 2)
        job = submit(c, command=["sh", "-c", 'test "${#BIG}" -eq ' + str(len(fits))],
                     env={name: fits})  # fmt: skip
        assert finish(c, job)["exit_code"] == 0
        assert c.call("system.ping") is not None

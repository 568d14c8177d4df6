"""Secrets over the real daemon: env_from_secrets reaches children, values never leak."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from hero_procd.client import Client
from hero_procd.errors import INVALID_PARAMS, NOT_FOUND, HeroError
from integration.daemon_proc import DaemonProcess
from integration.helpers import daemon_running, finish, wait_for

# Writes $TOKEN to the file named by its first argument, so the value never reaches a log line.
WRITE_TOKEN = 'printf %s "$TOKEN" > "$1"'


class Watched:
    """A client that checks every answer and every error for a secret value."""

    def __init__(self, client: Client, value: str) -> None:
        self.client = client
        self.value = value
        self.calls = 0

    def call(self, method: str, **params: Any) -> Any:
        """Call `method`; fail if the answer or the error carries the value."""
        self.calls += 1
        try:
            result = self.client.call(method, **params)
        except HeroError as exc:
            shown = f"{exc} {exc.message} {orjson.dumps(exc.data).decode()}"
            assert self.value not in shown, f"{method} error leaks the secret: {shown}"
            raise
        if method != "secret.get":
            assert self.value not in orjson.dumps(result).decode(), f"{method} leaks the secret"
        return result


@pytest.fixture
def secret_value() -> str:
    """A value found nowhere else (with a space and a non-ASCII letter)."""
    return f"s3cr3t {uuid.uuid4().hex} ünï"


@pytest.fixture
def started(workdir: Path, request: pytest.FixtureRequest) -> Iterator[DaemonProcess]:
    """A daemon logging at the level the test is parametrized with (info unless told)."""
    level = str(getattr(request, "param", "info"))
    with daemon_running(workdir, env={"HERO_PROC_LOG_LEVEL": level}) as proc:
        yield proc


@pytest.fixture
def c(started: DaemonProcess, secret_value: str) -> Iterator[Watched]:
    """A watched client of the daemon, with the secret `api_token` set."""
    with started.client() as client:
        watched = Watched(client, secret_value)
        assert watched.call("secret.set", name="api_token", value=secret_value) == {
            "name": "api_token"
        }
        yield watched


# At debug level too: a leak into the daemon's own log has every chance to show there.
@pytest.mark.parametrize("started", ["info", "debug"], indirect=True)
def test_secret_reaches_job_and_action_children_and_nothing_else(
    c: Watched, started: DaemonProcess, workdir: Path, secret_value: str
) -> None:
    """A job and an action's job get the value; no answer and no daemon log line has it."""
    out = workdir / "job.out"
    job_id = c.call(
        "job.submit",
        command=["sh", "-c", WRITE_TOKEN, "sh", str(out)],
        env_from_secrets={"TOKEN": "api_token"},
        tags=["s"],
    )["id"]
    job = finish(c, job_id)
    assert job["status"] == "succeeded", job
    assert job["env_from_secrets"] == {"TOKEN": "api_token"}
    assert out.read_text() == secret_value
    c.call("job.get", id=job_id)
    c.call("job.list")
    c.call("job.list", tag="s")
    c.call("job.logs", id=job_id)

    action_out = workdir / "action.out"
    c.call(
        "action.set",
        name="deploy",
        command=["sh", "-c", WRITE_TOKEN, "sh", str(action_out)],
        env_from_secrets={"TOKEN": "api_token"},
    )
    assert c.call("action.get", name="deploy")["env_from_secrets"] == {"TOKEN": "api_token"}
    c.call("action.list")
    from_action = finish(c, c.call("job.submit", action="deploy")["id"])
    assert from_action["status"] == "succeeded", from_action
    assert action_out.read_text() == secret_value

    run = c.call("run.submit", jobs=[{"key": "k", "action": "deploy"}])
    c.call("run.get", id=run["id"])
    assert finish(c, run["jobs"]["k"])["status"] == "succeeded"

    c.call(
        "schedule.set",
        name="nightly",
        cron="0 0 1 1 *",
        job={"action": "deploy", "env_from_secrets": {"OTHER": "api_token"}},
    )
    fired = c.call("schedule.trigger", name="nightly")
    assert finish(c, fired["job_id"])["status"] == "succeeded"
    c.call("schedule.list")
    c.call("system.info")
    c.call("secret.list")

    assert c.call("secret.get", name="api_token") == {"name": "api_token", "value": secret_value}
    assert c.calls > 15
    started.stop()  # flushes its log
    log = started.log()
    assert "hero-procd ready" in log, "the daemon's log is not where the test reads it"
    leaks = [line[:160] for line in log.splitlines() if secret_value.split()[1] in line]
    assert not leaks, f"the daemon's log holds the secret value: {leaks}"
    started.start()


def test_missing_secret_fails_the_job_naming_it(c: Watched, secret_value: str) -> None:
    """A missing secret fails the job; its error names the secret and holds no value."""
    job_id = c.call(
        "job.submit",
        command=["sh", "-c", "echo should not run"],
        env_from_secrets={"TOKEN": "api_token", "OTHER": "no_such_secret"},
    )["id"]
    job = finish(c, job_id)
    assert job["status"] == "failed", job
    assert "no_such_secret" in job["error"], job
    assert secret_value not in job["error"]
    assert c.call("job.logs", id=job_id)["lines"] == []

    with pytest.raises(HeroError) as err:
        c.call("secret.get", name="no_such_secret")
    assert err.value.code == NOT_FOUND and "no_such_secret" in str(err.value)
    # Refused params never echo the value back.
    for params in (
        {"name": "bad name!", "value": secret_value},
        {"name": "ok", "value": secret_value, "extra": secret_value},
        {"name": "", "value": secret_value},
    ):
        with pytest.raises(HeroError) as err:
            c.call("secret.set", **params)
        assert err.value.code == INVALID_PARAMS
    with pytest.raises(HeroError) as err:
        c.call("job.submit", command=["true"], env_from_secrets={"X": secret_value})
    assert err.value.code == INVALID_PARAMS
    assert [s["name"] for s in c.call("secret.list")["secrets"]] == ["api_token"]


def test_service_gets_its_secret(c: Watched, workdir: Path, secret_value: str) -> None:
    """A service with env_from_secrets has the value in its environment."""
    out = workdir / "svc.out"
    c.call(
        "service.define",
        name="web",
        command=["sh", "-c", f"{WRITE_TOKEN}; exec sleep 60", "sh", str(out)],
        env_from_secrets={"TOKEN": "api_token"},
    )
    c.call("service.start", name="web")
    wait_for(lambda: True if out.exists() and out.read_text() else None, "the service's file")
    assert out.read_text() == secret_value
    assert c.call("service.get", name="web")["env_from_secrets"] == {"TOKEN": "api_token"}
    c.call("service.list")
    c.call("service.status", name="web")
    c.call("service.status_all")
    c.call("service.logs", name="web")
    c.call("service.stop", name="web")


def test_delete_and_replace_and_file_mode(c: Watched, started: DaemonProcess) -> None:
    """secret.set replaces, secret.delete removes (later jobs fail), the db files are 0600."""
    c.call("secret.set", name="api_token", value="replaced value")
    assert c.call("secret.get", name="api_token")["value"] == "replaced value"
    listed = c.call("secret.list")["secrets"]
    assert [s["name"] for s in listed] == ["api_token"] and "value" not in listed[0]
    assert c.call("secret.delete", name="api_token") == {"deleted": 1}
    assert c.call("secret.delete", name="api_token") == {"deleted": 0}
    assert c.call("secret.list") == {"secrets": []}
    with pytest.raises(HeroError) as err:
        c.call("secret.get", name="api_token")
    assert err.value.code == NOT_FOUND
    job = finish(
        c, c.call("job.submit", command=["true"], env_from_secrets={"T": "api_token"})["id"]
    )
    assert job["status"] == "failed" and "api_token" in job["error"], job

    db = started.db_path
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if path.exists() or path == db:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            assert mode == 0o600, f"{path.name} has mode {oct(mode)}"


def test_a_value_too_long_for_an_environment_variable_is_refused(c: Watched) -> None:
    """`NAME=value` and its NUL must fit in the kernel's 128 KiB per environment string."""
    name = "envcap"
    fits = "v" * ((1 << 17) - len(name) - 2)
    c.call("secret.set", name=name, value=fits)
    with pytest.raises(HeroError) as err:
        c.call("secret.set", name=name, value=fits + "v")
    assert err.value.code == -32602 and "environment variable" in str(err.value.data)
    assert c.call("secret.get", name=name)["value"] == fits  # nothing changed
    c.call("secret.delete", name=name)

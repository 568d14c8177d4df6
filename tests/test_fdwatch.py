"""The loop's epoll set of short-lived descriptors (engine/fdwatch.py): real pipes."""

from __future__ import annotations

import asyncio
import os

from hero_procd.engine import fdwatch


def test_a_readable_pipe_calls_back_until_removed() -> None:
    async def main() -> list[bytes]:
        got: list[bytes] = []
        first = asyncio.Event()
        done = asyncio.Event()
        r, w = os.pipe()
        os.set_blocking(r, False)
        watcher = fdwatch.watcher()
        assert fdwatch.watcher() is watcher  # one per loop

        def readable() -> None:
            data = os.read(r, 100)
            got.append(data)
            first.set()
            if not data:  # EOF: the writer closed
                assert watcher.remove(r)
                os.close(r)
                done.set()

        watcher.add(r, readable)
        os.write(w, b"one")
        await asyncio.wait_for(first.wait(), 10)
        os.close(w)
        await asyncio.wait_for(done.wait(), 10)
        assert not watcher.remove(r)
        return got

    assert asyncio.run(main()) == [b"one", b""]


def test_a_descriptor_closed_and_reused_in_one_dispatch_is_not_called_for_the_old() -> None:
    """Two pipes ready at once; whichever callback runs first closes the other pipe and
    opens a new one that gets its number: the event read for the old pipe is not given
    to the new one's callback in that dispatch (the new one is called at the next)."""

    async def main() -> list[str]:
        watcher = fdwatch.watcher()
        pipes = {"a": os.pipe(), "b": os.pipe()}
        calls: list[str] = []
        swapped: list[tuple[int, int]] = []

        def on_new() -> None:
            calls.append("new")
            watcher.remove(swapped[0][0])

        def ready(name: str, other: str) -> None:
            calls.append(name)
            watcher.remove(pipes[name][0])
            if swapped:
                return
            old_r, old_w = pipes[other]
            watcher.remove(old_r)
            os.close(old_r)
            os.close(old_w)
            new_r, new_w = os.pipe()
            assert new_r == old_r  # the lowest free number: the one just closed
            swapped.append((new_r, new_w))
            os.write(new_w, b"x")
            watcher.add(new_r, on_new)

        watcher.add(pipes["a"][0], ready, "a", "b")
        watcher.add(pipes["b"][0], ready, "b", "a")
        os.write(pipes["a"][1], b"x")
        os.write(pipes["b"][1], b"x")
        watcher._dispatch()  # both events read in this one dispatch
        assert len(calls) == 1, calls
        watcher._dispatch()
        first = calls[0]
        for fd in (*pipes[first], *swapped[0]):
            os.close(fd)
        return calls

    assert asyncio.run(main())[1:] == ["new"]


def test_a_callback_that_raises_does_not_stop_the_others() -> None:
    async def main() -> list[str]:
        watcher = fdwatch.watcher()
        loop = asyncio.get_running_loop()
        errors: list[object] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx.get("exception")))
        pipes = [os.pipe() for _ in range(3)]
        calls: list[str] = []
        both = asyncio.Event()

        def bad() -> None:
            watcher.remove(pipes[0][0])
            raise RuntimeError("boom")

        def good(i: int) -> None:
            watcher.remove(pipes[i][0])
            calls.append(f"good{i}")
            if len(calls) == 2:
                both.set()

        watcher.add(pipes[0][0], bad)
        watcher.add(pipes[1][0], good, 1)
        watcher.add(pipes[2][0], good, 2)
        for _, w in pipes:
            os.write(w, b"x")
        await asyncio.wait_for(both.wait(), 10)
        assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
        for r, w in pipes:
            os.close(r)
            os.close(w)
        return sorted(calls)

    assert asyncio.run(main()) == ["good1", "good2"]

"""A supervised child server process: launch, wait until it answers, restart it with backoff when it dies, stop it.

Used for ``vllm serve`` children. The child runs in its own process group (vLLM starts worker processes for
tensor parallelism; stopping must reach them all) and dies with us if we are killed outright (Linux
``PR_SET_PDEATHSIG``). Its output becomes ``child_output`` log events (vLLM >= 0.11 logs no prompts unless
``--enable-log-requests`` is given); the last lines are kept for error messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence

import httpx

from .. import logs
from ..errors import EngineUnavailable


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    """Keeps ``command`` running and ready. ``ready`` is True only while the child answers ``/health`` and lists
    ``model`` in ``/v1/models``; after a crash it is False until the restarted child is ready again.

    Backoff between restarts doubles from ``backoff_s`` up to ``max_backoff_s`` and starts over once a child has
    stayed up for ``stable_s``.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        base_url: str,
        model: str,
        *,
        startup_timeout_s: float = 900.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        stable_s: float = 60.0,
        stop_grace_s: float = 30.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.startup_timeout_s = startup_timeout_s
        self.backoff_s, self.max_backoff_s, self.stable_s = backoff_s, max_backoff_s, stable_s
        self.stop_grace_s = stop_grace_s
        self.env = env
        self.ready = False
        self.ready_at: float | None = None  # time.time() when the child last became ready
        self.restarts = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.tail: deque[str] = deque(maxlen=30)
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Launch the child and wait until it is ready; then watch it. Raises EngineUnavailable if it never is."""
        await self._launch_and_wait()
        self._watch = asyncio.create_task(self._supervise())

    async def _launch_and_wait(self) -> None:
        await self._launch()
        try:
            await self._wait_ready()
        except EngineUnavailable:
            await self._terminate()
            raise

    async def _launch(self) -> None:
        self.ready = False
        self.proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            env=self.env,
        )
        self._pump = asyncio.create_task(self._pass_output(self.proc))
        logs.event("child_started", child=self.name, pid=self.proc.pid, restarts=self.restarts)

    async def _pass_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            self.tail.append(text)
            logs.event("child_output", child=self.name, line=text)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.returncode is not None:
                    await self._drain()
                    raise EngineUnavailable(
                        f"{self.name} exited with code {self.returncode} before it was ready; "
                        f"last output:\n" + "\n".join(self.tail)
                    )
                if await self._answers(client):
                    self.ready, self.ready_at = True, time.time()
                    logs.event("child_ready", child=self.name, pid=self.proc.pid)
                    return
                await asyncio.sleep(0.25)
        raise EngineUnavailable(f"{self.name} was not ready after {self.startup_timeout_s:.0f}s")

    async def _answers(self, client: httpx.AsyncClient) -> bool:
        try:
            if (await client.get("/health")).status_code != 200:
                return False
            models = (await client.get("/v1/models")).json().get("data") or []
            return any(m.get("id") == self.model for m in models)
        except (httpx.HTTPError, ValueError, AttributeError):
            return False

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def _drain(self) -> None:
        if self._pump is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._pump), 2.0)

    async def _supervise(self) -> None:
        """Wait for the child to exit; unless we are stopping, restart it (with backoff) until it is ready."""
        delay = self.backoff_s
        while not self._stopping:
            assert self.proc is not None
            up_since = time.monotonic()
            code = await self.proc.wait()
            self.ready = False
            if self._stopping:
                return
            await self._drain()
            if time.monotonic() - up_since >= self.stable_s:
                delay = self.backoff_s
            logs.event("child_exited", child=self.name, code=code, restart_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)
            self.restarts += 1
            try:
                await self._launch_and_wait()
            except EngineUnavailable as exc:
                logs.event("child_restart_failed", child=self.name, error=exc.message.splitlines()[0])

    async def stop(self) -> None:
        """Terminate the child's process group, then kill it if it has not exited within ``stop_grace_s``."""
        self._stopping = True
        self.ready = False
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self._terminate()

    async def _terminate(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            await self._drain()
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.stop_grace_s)
        except TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        await self._drain()
        logs.event("child_stopped", child=self.name, code=proc.returncode)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the child leads its own session, so its group id is its pid

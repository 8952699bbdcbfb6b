"""Reusable harness: start a training process, SIGKILL it at a random moment, restart, check what survived.

The process under test speaks a small line protocol on stdout (flushed after every line):

- ``FRESH`` or ``RESUMED <step>``: what it found at start;
- ``READY``: start-up is over (kill delays count from here, so imports do not eat them);
- ``SAVING <step>`` / ``SAVED <step>``: around each checkpoint save (``SAVED`` after rotation);
- ``DONE``: it reached its last step.

Any training code can speak it: the plain loop in ``crash_train_loop.py`` today, a Trainer script
with a small callback later. A process is either a fresh interpreter (``start_command``) or a
fork of the test process (``start_forked``: the same SIGKILL, without paying ``import torch``
again for every trial, which keeps 20 trials within seconds).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

SRC = str(Path(__file__).resolve().parents[2] / "src")


class TrainingProcess(Protocol):
    """What the harness needs of a process (``subprocess.Popen`` has it; ``ForkedProcess`` too)."""

    stdout: Any
    returncode: int | None

    def poll(self) -> int | None: ...
    def send_signal(self, sig: int) -> None: ...
    def communicate(self, timeout: float | None = None) -> tuple[str, str]: ...


def python_env() -> dict[str, str]:
    """Environment for a child Python that imports trainkit from the source tree, single-threaded."""
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start_command(command: list[str]) -> subprocess.Popen[str]:
    """Run a command (e.g. ``[sys.executable, script, ...]``) in a fresh interpreter."""
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())


def script_command(script: Path, *args: object) -> list[str]:
    return [sys.executable, str(script), *(str(arg) for arg in args)]


class ForkedProcess:
    """``target(*args)`` run in a forked child whose stdout and stderr are pipes (a small Popen look-alike)."""

    def __init__(self, target: Callable[..., object], *args: object) -> None:
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child never returns into the caller (pytest): it always leaves through os._exit
            os.close(out_read)
            os.close(err_read)
            os._exit(_run_child(target, args, out_write, err_write))
        os.close(out_write)
        os.close(err_write)
        self.pid = pid
        self.stdout = open(out_read, encoding="utf-8")  # noqa: SIM115 (closed in communicate)
        self._stderr = open(err_read, encoding="utf-8")  # noqa: SIM115
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        rest, errors = self.stdout.read(), self._stderr.read()
        self.stdout.close()
        self._stderr.close()
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return rest, errors


def _run_child(target: Callable[..., object], args: tuple[object, ...], out_fd: int, err_fd: int) -> int:
    try:
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        target(*args)
        sys.stdout.flush()
        return 0
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        return 1


def start_forked(target: Callable[..., object], *args: object) -> ForkedProcess:
    return ForkedProcess(target, *args)


@dataclass
class Trial:
    """What one run of the process printed, and whether it was killed."""

    lines: list[str] = field(default_factory=list)
    killed: bool = False
    returncode: int | None = None

    def values(self, tag: str) -> list[int]:
        return [int(line.split()[1]) for line in self.lines if line.startswith(tag + " ")]

    @property
    def resumed_from(self) -> int | None:
        """The step it resumed from, None for a fresh start."""
        steps = self.values("RESUMED")
        return steps[0] if steps else None

    @property
    def last_saved(self) -> int | None:
        saved = self.values("SAVED")
        return saved[-1] if saved else self.resumed_from

    @property
    def killed_while_saving(self) -> bool:
        """Killed after a ``SAVING`` line that no ``SAVED`` line followed."""
        tags = [line.split()[0] for line in self.lines if line.startswith(("SAVING", "SAVED"))]
        return self.killed and bool(tags) and tags[-1] == "SAVING"


def _lines(process: TrainingProcess) -> Iterator[str]:
    for line in process.stdout:
        yield line.strip()


def run_and_kill(
    start: Callable[[], TrainingProcess], delay: float | None, timeout: float = 300.0, after: str = "READY"
) -> Trial:
    """Start a process; ``delay`` seconds after the first line starting with ``after`` (``READY``, or
    ``SAVING`` to aim at a save whatever the machine's load), SIGKILL it (None: let it finish)."""
    trial = Trial()
    process = start()
    deadline = time.monotonic() + timeout
    for line in _lines(process):
        trial.lines.append(line)
        if line.startswith(after) and delay is not None:
            time.sleep(delay)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                trial.killed = True
            break
        if time.monotonic() > deadline:
            process.send_signal(signal.SIGKILL)
            raise TimeoutError(f"the training process ran past {timeout} s; last lines: {trial.lines[-5:]}")
    rest, errors = process.communicate(timeout=timeout)
    trial.lines.extend(line.strip() for line in rest.splitlines())
    trial.returncode = process.returncode
    if not trial.killed and process.returncode != 0:
        raise RuntimeError(f"the training process failed ({process.returncode}):\n{errors[-3000:]}")
    return trial

"""Launch real multi-process jobs with torchrun (``python -m torch.distributed.run``) from the tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"


def free_port() -> int:
    """A TCP port nobody listens on now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def job_env() -> dict[str, str]:
    """The environment of a launched job: trainkit and the test helpers importable, one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    env["OMP_NUM_THREADS"] = "1"
    return env


@dataclass
class Job:
    returncode: int
    output: str
    seconds: float


def _command(script: str, args: tuple[str, ...], nproc: int, nnodes: int, node_rank: int, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--nnodes={nnodes}",
        f"--node_rank={node_rank}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(SCRIPTS / script),
        *args,
    ]


def torchrun(script: str, *args: str, nproc: int = 2, timeout: float = 120, env: dict[str, str] | None = None) -> Job:
    """Run ``tests/integration/scripts/<script>`` under torchrun; stdout and stderr together in ``output``."""
    command = _command(script, args, nproc, 1, 0, free_port())
    return _run(command, timeout, env)


def deepspeed_launcher(
    script: str, *args: str, nproc: int = 2, timeout: float = 120, env: dict[str, str] | None = None
) -> Job:
    """Run ``tests/integration/scripts/<script>`` under DeepSpeed's own launcher (``deepspeed --num_gpus N``)."""
    launcher = Path(sys.executable).with_name("deepspeed")
    command = [str(launcher), f"--num_gpus={nproc}", f"--master_port={free_port()}", str(SCRIPTS / script), *args]
    return _run(command, timeout, env)


def _run(command: list[str], timeout: float, env: dict[str, str] | None) -> Job:
    start = time.monotonic()
    environment = {**job_env(), **(env or {})}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment, cwd=ROOT)
    return Job(done.returncode, done.stdout + done.stderr, time.monotonic() - start)


def torchrun_nodes(script: str, *args: str, nnodes: int = 2, nproc: int = 1, timeout: float = 120) -> list[Job]:
    """Run ``script`` as a multi-node job: one torchrun per "node" on this machine (static rendezvous)."""
    port = free_port()
    start = time.monotonic()
    agents = [
        subprocess.Popen(
            _command(script, args, nproc, nnodes, node, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=job_env(),
            cwd=ROOT,
        )
        for node in range(nnodes)
    ]
    jobs = []
    for agent in agents:
        try:
            output, _ = agent.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in agents:
                other.kill()
            raise
        jobs.append(Job(agent.returncode, output, time.monotonic() - start))
    return jobs


def run_spec(
    spec: dict[str, Any], folder: Path, nproc: int = 2, timeout: float = 120, env: dict[str, str] | None = None
) -> Job:
    """Write ``spec`` as JSON into ``folder`` and run the scenario script on it under torchrun."""
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    job = torchrun("scenarios.py", str(path), "--output", str(folder), nproc=nproc, timeout=timeout, env=env)
    assert job.returncode == 0, f"torchrun failed ({job.returncode}):\n{job.output[-6000:]}"
    return job


def shared_job_folder(tmp_path_factory: Any, name: str, launch: Any) -> Path:
    """``launch(folder)`` run once per test session even when xdist spreads a module's tests over workers.

    Workers share the parent of their base temporary folder; the first to get the lock launches the
    job, the others wait for it and reuse its results (pytest-xdist's documented pattern).
    """
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (folder / "done").exists():
            folder.mkdir(parents=True, exist_ok=True)
            launch(folder)
            (folder / "done").write_text("ok")
    return folder

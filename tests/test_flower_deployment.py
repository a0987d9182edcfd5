"""The README's Flower deployment block, run as written: a ``flower-superlink``, three
``flower-supernode`` processes on one host and ``flwr run . lab`` (issue 16 item 4).

The commands come from README.md (the first ``bash`` block under :data:`HEADING`), so the
README and this test cannot drift. The only changes: every port the block names is mapped to
a free 127.0.0.1 port, ``FLWR_HOME`` is a temporary folder, ``flwr run`` gets a tiny
``--run-config``, and ``kill $(jobs -p)`` is done here (SIGTERM to each process group, then
SIGKILL), also on failure.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
HEADING = "### Deployment: a SuperLink and three SuperNodes on one host"
BIN = Path(sys.executable).parent
TINY = ('pretrain-steps=3 steps-per-stage=2 adapt-steps=2 batch-size=32 critic-steps=2 '
        'generator-width=32 critic-width=32 eval-samples=0 device="cpu" round-timeout=120')
PORT = re.compile(r"(?<=--port )\d+|(?<=127\.0\.0\.1:)\d+")


def readme_commands(text: str) -> list[str]:
    """The commands of the first ``bash`` block after :data:`HEADING`; a heredoc stays one command."""
    assert f"\n{HEADING}\n" in text, f"README.md has no line {HEADING!r}"
    block = text.split(f"\n{HEADING}\n", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    commands: list[str] = []
    lines = iter(block.splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", line)
        if heredoc:
            body = [line]
            for more in lines:
                body.append(more)
                if more.strip() == heredoc.group(1):
                    break
            line = "\n".join(body)
        commands.append(line)
    return commands


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"port {port} not open after {timeout}s:\n{log.read_text()[-3000:]}")


class Deployment:
    """Runs README commands; background ones (``… &``) are process groups stopped by :meth:`stop`."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
        self.background: dict[str, tuple[subprocess.Popen, Path]] = {}  # command → (process, log)
        self.outputs: dict[str, str] = {}  # first two words of a command → its output

    def run(self, commands: list[str], before_kill: Callable[[], None]) -> None:
        """Run ``commands`` in order; ``before_kill`` runs while everything is still up."""
        ports = dict.fromkeys(PORT.findall("\n".join(commands)))
        ports = dict(zip(ports, map(str, _free_ports(len(ports)))))
        for command in commands:
            command = PORT.sub(lambda m: ports[m.group(0)], command)
            if command.startswith("export "):
                key, _, value = command[len("export "):].partition("=")
                self.env[key] = value
            elif command.endswith("&"):
                self.start(command[:-1].strip())
            elif command.startswith("kill "):
                before_kill()
                self.stop(check=True)
            else:
                self.wait_ports()
                if command.startswith("flwr run "):
                    command += f" --run-config {shlex.quote(TINY)}"
                self.outputs[" ".join(command.split()[:2])] = self.shell(command)

    def shell(self, command: str, timeout: float = 300) -> str:
        done = subprocess.run(["bash", "-ec", command], capture_output=True, text=True, env=self.env, cwd=REPO,
                              timeout=timeout)
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"{command}\n{out[-3000:]}"
        return out

    def start(self, command: str) -> None:
        log = self.tmp / f"background-{len(self.background)}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(["bash", "-c", f"exec {command}"], stdout=out, stderr=subprocess.STDOUT,
                                    env=self.env, cwd=REPO, start_new_session=True)
        self.background[command] = proc, log
        if command.startswith("flower-superlink"):  # SuperNodes start faster once it listens
            self.wait_ports()

    def wait_ports(self) -> None:
        """Every background process listens on its ``--port`` (none died, e.g. address in use)."""
        for command, (proc, log) in self.background.items():
            _wait_port(int(re.search(r"--port (\d+)", command).group(1)), proc, log)

    def replace(self, old: str, new: str) -> None:
        """Stop the background command containing ``old`` and start it again with ``new`` instead."""
        (command,) = [c for c in self.background if old in c]
        proc, _ = self.background.pop(command)
        _signal(proc, signal.SIGTERM)
        proc.wait(timeout=30)
        self.start(command.replace(old, new))
        self.wait_ports()

    def stop(self, check: bool = False) -> None:
        """SIGTERM every process group, SIGKILL what is left after 10 s; ``check``: all were alive."""
        for proc, log in self.background.values():
            assert not check or proc.poll() is None, f"exited early:\n{log.read_text()[-3000:]}"
            _signal(proc, signal.SIGTERM)
        for proc, _ in self.background.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait(timeout=5)
        for proc, _ in self.background.values():  # the ClientApp / ServerApp children of each group too
            _signal(proc, signal.SIGKILL)
        self.background.clear()

    def flwr_json(self, *args: str) -> dict:
        """``flwr <args> lab --format json``, parsed."""
        done = subprocess.run([str(BIN / "flwr"), *args, "lab", "--format", "json"], capture_output=True, text=True,
                              env=self.env, cwd=REPO, timeout=60)
        return json.loads(done.stdout)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def deployment(tmp_path):
    if not (BIN / "flower-superlink").exists():
        pytest.skip("flower-superlink not installed next to this Python")
    dep = Deployment(tmp_path)
    try:
        yield dep
    finally:
        dep.stop()


def test_readme_block_parses_into_the_documented_steps():
    commands = readme_commands(README.read_text())
    programs = [c.split()[0] for c in commands]
    assert programs == ["export", "flower-superlink", "flower-supernode", "flower-supernode", "flower-supernode",
                        "flwr", "cat", "flwr", "flwr", "kill"]
    node_ports = [re.search(r"--port (\d+)", c).group(1) for c in commands if c.startswith("flower-supernode")]
    assert len(set(node_ports)) == 3  # one Runtime API port per SuperNode on the host
    assert "[superlink.lab]" in commands[6] and commands[7].startswith("flwr run . lab")


@pytest.mark.timeout(480)
def test_readme_deployment_runs_and_a_failing_source_fails_the_round(deployment):
    """The README's commands complete a run; then SuperNode 1 is restarted with a GPU this host
    does not have (``cuda:64``) and the same ``flwr run`` must end ``finished:failed``, naming it."""
    commands = readme_commands(README.read_text())
    (submit,) = [c for c in commands if c.startswith("flwr run ")]
    runs: list[dict] = []

    def failing_source_run() -> None:
        # the stopped SuperNode unregisters before it exits; the ServerApp waits for 3 nodes again
        deployment.replace("'partition-id=1'", "'partition-id=1 device=\"cuda:64\"'")
        deployment.outputs["failing run"] = deployment.shell(
            f"{submit} --run-config {shlex.quote(TINY)}")
        runs.extend(sorted(deployment.flwr_json("ls")["runs"], key=lambda r: r["pending-at"]))

    deployment.run(commands, before_kill=failing_source_run)

    # the README run: Stage I over both sources' uploads, then Stage II at the target
    out = deployment.outputs["flwr run"]
    assert "Successfully started run" in out, out[-3000:]
    assert "'sources': 2" in out and "'w1-estimate'" in out, out[-3000:]
    assert "Listing all runs" in deployment.outputs["flwr ls"]
    assert [r["status"] for r in runs] == ["finished:completed", "finished:failed"], runs
    # the failing run: one line naming the rule, the counts and the node's own error
    details = runs[1]["status-details"]
    assert "min-sources: round 1: 1 source(s) uploaded a model, 2 required (node " in details, details
    assert re.search(r"'cuda:64' (but only \d+ GPU|asked for but no CUDA GPU)", details), details

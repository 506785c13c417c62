"""What every pod we start runs: the TTL watchdog, then the flow-run command (or, in dev mode, SSH).

    python -m infra.pod.entrypoint -- prefect flow-run execute     # flow-run pods (the worker's docker_args)
    python -m infra.pod.entrypoint --dev                           # dev pods: watchdog + SSH, no flow run

RunPod restarts a container whose start command exits, which would run a finished flow again. So in
a pod this entrypoint never just exits: when the command ends it terminates its own pod (falling back
to stopping it) and waits to be killed. Prefect's flow-run state, not the pod, records how the work
went. If the container restarts after the command had already started (an out-of-memory kill, say),
the entrypoint does not start the flow run a second time; it ends the pod and the worker reports the
run as crashed.

Outside RunPod (no ``RUNPOD_POD_ID``) it runs the command and exits with its status.

Told to stop (SIGTERM/SIGINT from outside, or the TTL watchdog's warning some minutes before the
deadline), it passes SIGTERM on to the processes the command started, so the flow run's engine
gets it and training stores a checkpoint before the pod goes (:mod:`compute.training.stop_request`).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from infra.pod.own_pod import OwnPod
from infra.pod.ttl_watchdog import TtlWatchdog

logger = logging.getLogger("infra.pod.entrypoint")

RESTART_MARKER_NAME = ".ow-flow-run-started"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra.pod.entrypoint",
        description="Start the TTL watchdog, then run COMMAND (or SSH in --dev mode), then end this pod.",
    )
    parser.add_argument("--dev", action="store_true", help="dev pod: watchdog and SSH only, no command")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the flow-run command, after --")
    return parser


def start_ssh_server(public_key: str | None) -> bool:
    """Authorize ``public_key`` for SSH and start ``sshd`` if the image has it; True when started."""
    if not public_key:
        logger.info("No PUBLIC_KEY in the environment; SSH is not set up")
        return False
    ssh_dir = Path.home() / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    authorized_keys = ssh_dir / "authorized_keys"
    existing = authorized_keys.read_text() if authorized_keys.exists() else ""
    if public_key.strip() not in existing:
        authorized_keys.write_text(existing + public_key.strip() + "\n")
    authorized_keys.chmod(0o600)
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if sshd is None:
        logger.warning("sshd is not installed in this image; SSH is unavailable")
        return False
    subprocess.run(["ssh-keygen", "-A"], check=False)
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
    started = subprocess.run([sshd], check=False).returncode == 0
    logger.info("sshd %s", "started" if started else "failed to start")
    return started


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (its children first), read from ``/proc``; [] where there is none."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (name) state ppid ...": the name may hold spaces and parentheses, so split after it.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    queue = [pid]
    while queue:
        below = children.get(queue.pop(0), [])
        found.extend(below)
        queue.extend(below)
    return found


class _ChildRunner:
    """Runs the command as a child and passes SIGTERM/SIGINT on (``docker stop`` signals PID 1 only)."""

    def __init__(self, command: Sequence[str]):
        self.command = list(command)
        self.stopped_from_outside = False
        self.stopped_at_ttl_warning = False
        self._child: subprocess.Popen | None = None

    def run(self) -> int:
        try:
            child = self._child = subprocess.Popen(self.command)
        except OSError as exc:  # e.g. the image lacks the program: end the pod, do not crash-loop
            logger.error("Cannot start %s: %s", self.command[0], exc)
            return 127

        def forward(signum: int, _frame: object) -> None:
            self.stopped_from_outside = True
            self.signal_command(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def signal_command(self, signum: int) -> None:
        """Send ``signum`` to the processes the command started, or to the command if it started none.

        ``prefect flow-run execute`` runs the flow run's engine in a process of its own session and
        dies at a SIGTERM (unless ``PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR`` is set, which we do
        not set): signalled alone, it would leave the engine to be killed with the container before
        training stores its checkpoint. Signalled directly, the engine stops (checkpoint, then the
        run's crash report) and the command exits as it does whenever its engine ends.
        """
        child = self._child
        if child is None or child.returncode is not None:
            return
        for pid in descendants(child.pid) or [child.pid]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:  # ended meanwhile
                pass

    def stop_at_ttl_warning(self, reason: str) -> None:
        """The TTL watchdog's warning: SIGTERM the command so training checkpoints before the pod ends."""
        child = self._child
        if child is None or child.returncode is not None:
            logger.warning("%s; no command is running to stop", reason)
            return
        logger.warning("%s; sending SIGTERM to the flow-run command so it stores its work first", reason)
        self.stopped_at_ttl_warning = True
        self.signal_command(signal.SIGTERM)


def end_pod_and_wait(own_pod: OwnPod, reason: str) -> None:
    """Ask RunPod to end this pod until it accepts, then wait for the kill. Never returns."""
    delay = 2.0
    while not own_pod.end(reason):
        time.sleep(delay)
        delay = min(delay * 2, 60.0)
    threading.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    if not args.dev and not command:
        _parser().error("a command is required after -- (or --dev)")

    own_pod = OwnPod.from_environment()
    if own_pod is None:
        logger.warning(
            "Not in a RunPod pod (RUNPOD_POD_ID/RUNPOD_API_KEY unset): the TTL cannot end anything"
        )
    runner = _ChildRunner(command)
    TtlWatchdog.from_environment(
        end_pod=own_pod.end if own_pod else (lambda reason: False),
        on_warning=None if args.dev else runner.stop_at_ttl_warning,  # a dev pod's warning is only logged
    ).start()

    if args.dev:
        start_ssh_server(os.environ.get("PUBLIC_KEY"))
        logger.info(
            "Dev pod ready; check or change its TTL with `python -m infra.pod.ttl --check|--extend|--set`"
        )
        threading.Event().wait()  # the watchdog, or a terminate from outside, ends the pod

    if own_pod is not None:
        marker = Path.home() / RESTART_MARKER_NAME
        if marker.exists():
            end_pod_and_wait(
                own_pod,
                "the container restarted after the flow-run command had started; not running it twice",
            )
        marker.touch()

    status = runner.run()
    logger.info("Command exited with status %s", status)
    if own_pod is None or runner.stopped_from_outside:
        # Stopped from outside (RunPod stopping or terminating the pod): the container is going away
        # and will not be restarted, so exiting is right and ending the pod again is pointless.
        return status
    stopped = " after the TTL warning stopped it" if runner.stopped_at_ttl_warning else ""
    end_pod_and_wait(own_pod, f"the flow-run command finished{stopped} (exit status {status})")
    return status  # unreachable in a pod: end_pod_and_wait waits for the kill


if __name__ == "__main__":
    sys.exit(main())

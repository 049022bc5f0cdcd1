"""Run one training job as several processes on this machine (multi-process data parallel,
as on a cluster, for testing it or for using more cores):

    python -m experiments.launch --processes 2 -- experiments.dna --epochs 5 --out runs/dna_2p
    python -m experiments.launch --processes 2 --devices-per-process 2 -- experiments.dna --epochs 5

Each worker is `python -m MODULE ARGS --coordinator 127.0.0.1:PORT --num-processes N
--process-id I` in its own process group, with D forced CPU devices (XLA_FLAGS) and small
distributed timeouts (MOLML_DISTRIBUTED_*_TIMEOUT, unless already set). For the pipelines
(experiments.dna / tf_binding / segmentation) `--devices D` is added to a train or sweep
command that does not give --devices; another MODULE must read its device count itself.

Process 0's output passes through unchanged; the others' lines come prefixed with
"[process I] " as they are written (live: when a worker fails, the line that says why is on
screen in order with the rest). The launcher exits 0 when every process does; when one
fails (an exit code or a signal) it says which in one line, stops the others (SIGTERM, which
JAX takes as a preemption notice, then SIGKILL 3 s later) and exits 1, in a few seconds
(JAX's own timeouts are minutes, and a peer left in a collective would wait forever).
--timeout-seconds bounds the whole job the same way; Ctrl-C stops every worker. A coordinator port found taken is retried on a new port.
On a cluster, give the three flags to each process yourself, or let Slurm / Open MPI set
them (see molml_jax.distributed).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Callable, Sequence

PIPELINES = ("experiments.dna", "experiments.tf_binding", "experiments.segmentation")
# set for the workers unless the environment has them: a local job fails in seconds, not minutes
WORKER_TIMEOUTS = {"MOLML_DISTRIBUTED_INIT_TIMEOUT": "60", "MOLML_DISTRIBUTED_HEARTBEAT_TIMEOUT": "20",
                   "MOLML_DISTRIBUTED_SHUTDOWN_TIMEOUT": "30"}
STOP_GRACE_SECONDS = 3.0  # SIGTERM (which JAX catches, as a preemption notice), then SIGKILL
PORT_RETRIES = 3
CLASH_WINDOW_SECONDS = 30.0  # a port clash shows at start-up: process 0 fails this early
# what a taken port looks like: molml_jax.distributed's check, gRPC's bind error
CLASH_MARKERS = (b"is already in use", b"Failed to add port")
KILLED_FROM_OUTSIDE = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}


class UsageError(Exception):
    """Bad launcher input: one line, exit 2."""


# ---- the command line -------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m experiments.launch", allow_abbrev=False,
        usage="%(prog)s --processes N [--devices-per-process D] [--port P] [--timeout-seconds S] "
              "-- MODULE [ARGS...]",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, required=True, metavar="N", help="worker processes")
    parser.add_argument("--devices-per-process", type=int, default=1, metavar="D",
                        help="forced CPU devices in each worker (default 1); a pipeline's train/sweep "
                             "command gets --devices D unless it gives --devices (which must then be D)")
    parser.add_argument("--port", type=int, metavar="P",
                        help="coordinator port on 127.0.0.1 (default: a free one; a taken one is replaced)")
    parser.add_argument("--timeout-seconds", type=float, metavar="S",
                        help="stop the whole job after S seconds of wall-clock time (default: none)")
    return parser


@dataclasses.dataclass
class Job:
    module: str
    args: list[str]
    processes: int
    devices: int = 1
    port: int | None = None
    timeout: float | None = None


def parse_args(argv: Sequence[str]) -> Job:
    """Launcher options, `--`, then MODULE (or `-m MODULE`) and its arguments."""
    argv = list(argv)
    if "--" not in argv:
        if any(a in ("-h", "--help") for a in argv):
            build_parser().print_help()
            raise SystemExit(0)
        raise UsageError("give the worker after '--': ... -- experiments.dna [ARGS]")
    cut = argv.index("--")
    options, rest = argv[:cut], argv[cut + 1:]
    ns = build_parser().parse_args(options)
    if rest[:1] == ["-m"]:
        rest = rest[1:]
    if not rest or rest[0].startswith("-"):
        raise UsageError("no module after '--': ... -- experiments.dna [ARGS]")
    if ns.processes < 1:
        raise UsageError(f"--processes must be at least 1, got {ns.processes}")
    if ns.devices_per_process < 1:
        raise UsageError(f"--devices-per-process must be at least 1, got {ns.devices_per_process}")
    if ns.port is not None and not 1 <= ns.port <= 65535:
        raise UsageError(f"--port must be 1-65535, got {ns.port}")
    if ns.timeout_seconds is not None and not ns.timeout_seconds > 0:
        raise UsageError(f"--timeout-seconds must be positive, got {ns.timeout_seconds}")
    module, args = rest[0], rest[1:]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UsageError(f"no module named {module!r} (give a module as for python -m, e.g. experiments.dna)")
    taken = [a for a in args if a.split("=")[0] in ("--coordinator", "--num-processes", "--process-id")]
    if taken:
        raise UsageError(f"{taken[0].split('=')[0]} is set by the launcher; leave it out")
    return Job(module, with_devices(module, args, ns.devices_per_process), ns.processes,
               ns.devices_per_process, ns.port, ns.timeout_seconds)


def with_devices(module: str, args: list[str], devices: int) -> list[str]:
    """A pipeline's train/sweep command gets --devices D when it does not say it; one that
    says another number is an error (the workers have D devices)."""
    if module not in PIPELINES or (args and not args[0].startswith("-") and args[0] not in ("train", "sweep")):
        return args
    given = [args[i + 1] if a == "--devices" and i + 1 < len(args) else a.split("=", 1)[1]
             for i, a in enumerate(args) if a == "--devices" or a.startswith("--devices=")]
    if not given:
        return args + ["--devices", str(devices)] if devices > 1 else args
    if given[-1] != str(devices):
        raise UsageError(f"--devices {given[-1]} differs from --devices-per-process {devices} "
                         "(--devices counts the devices of each process)")
    return args


# ---- the workers --------------------------------------------------------------------------

def free_port() -> int:
    """A port nothing listens on now (another program may still take it: see run_job)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env(processes: int, devices: int, base: dict | None = None) -> dict:
    """The launcher's environment with D forced CPU devices (any other count removed), the
    cores shared between the devices of all workers, unbuffered output (an abort's last
    lines are not lost) and small distributed timeouts."""
    env = dict(os.environ if base is None else base)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", env.get("XLA_FLAGS", "")).split()
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    else:
        env.pop("XLA_FLAGS", None)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (processes * devices))))
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in WORKER_TIMEOUTS.items():
        env.setdefault(name, value)
    return env


def worker_command(job: Job, port: int, index: int) -> list[str]:
    return [sys.executable, "-m", job.module, *job.args, "--coordinator", f"127.0.0.1:{port}",
            "--num-processes", str(job.processes), "--process-id", str(index)]


def _die_with_parent() -> None:
    """In the child before exec: killed if the launcher itself is killed (SIGKILL leaves it
    no chance to stop the workers)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Forward(threading.Thread):
    """Copies a worker's pipe to the launcher's stream: raw (process 0: progress bars keep
    their carriage returns) or line by line with a prefix; keeps the last bytes to look for
    a port clash."""

    def __init__(self, pipe: IO[bytes], stream: IO, prefix: bytes = b""):
        super().__init__(daemon=True)
        self.pipe, self.stream, self.prefix, self.tail = pipe, stream, prefix, b""

    def _write(self, data: bytes) -> None:
        out = getattr(self.stream, "buffer", None)
        try:
            if out is not None:
                self.stream.flush()
                out.write(data)
                out.flush()
            else:
                self.stream.write(data.decode(errors="replace"))
                self.stream.flush()
        except (OSError, ValueError):
            pass  # the launcher's own output is gone: keep draining the pipe

    def run(self) -> None:
        pending = b""
        while chunk := os.read(self.pipe.fileno(), 65536):
            self.tail = (self.tail + chunk)[-8192:]
            if not self.prefix:
                self._write(chunk)
                continue
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if lines:
                self._write(b"".join(self.prefix + line + b"\n" for line in lines))
        if pending and self.prefix:
            self._write(self.prefix + pending + b"\n")
        self.pipe.close()


@dataclasses.dataclass
class Worker:
    index: int
    process: subprocess.Popen
    readers: list[Forward]

    def tail(self) -> bytes:
        return b"".join(r.tail for r in self.readers)


def start_worker(command: list[str], env: dict, index: int) -> Worker:
    """One worker in its own session (its whole tree can be signalled); process 0 writes
    to the launcher's stdout directly, its stderr is copied unchanged."""
    popen = subprocess.Popen(command, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                             stdout=None if index == 0 else subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    prefix = b"" if index == 0 else f"[process {index}] ".encode()
    readers = [Forward(popen.stderr, sys.stderr, prefix)]
    if index:
        readers.append(Forward(popen.stdout, sys.stdout, prefix))
    for reader in readers:
        reader.start()
    return Worker(index, popen, readers)


# ---- watching and stopping ------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    """How a job ended: "done" (every process exited 0), "failed" (`index` exited with
    `returncode` first; `also` lists (index, returncode) of others already failed by then)
    or "deadline"."""
    kind: str
    index: int | None = None
    returncode: int | None = None
    also: list[tuple[int, int]] = dataclasses.field(default_factory=list)


def watch(processes: Sequence[subprocess.Popen], deadline: float | None = None,
          poll_seconds: float = 0.05) -> Outcome:
    """Wait until every process exited 0, one failed, or time.monotonic() passed
    `deadline`. Several failures seen at once: the cause is taken to be one that did not
    abort (SIGABRT is how JAX's processes react to a peer's death). Kills nothing."""
    while True:
        codes = [p.poll() for p in processes]
        failed = [(i, rc) for i, rc in enumerate(codes) if rc not in (None, 0)]
        if failed:
            failed.sort(key=lambda f: f[1] == -signal.SIGABRT)
            return Outcome("failed", failed[0][0], failed[0][1], failed[1:])
        if all(rc == 0 for rc in codes):
            return Outcome("done")
        if deadline is not None and time.monotonic() >= deadline:
            return Outcome("deadline")
        time.sleep(poll_seconds)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the worker leads its own group (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def stop(processes: Sequence[subprocess.Popen], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM every worker's process group, SIGKILL what is left after `grace` seconds,
    and reap them: bounded by grace + a second or two."""
    for p in processes:
        _signal_group(p, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end and any(p.poll() is None for p in processes):
        time.sleep(0.05)
    for p in processes:
        _signal_group(p, signal.SIGKILL)  # also any child left in the group by a dead leader
    for p in processes:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def describe(returncode: int) -> str:
    """'code 3', 'SIGKILL (killed from outside the job)', 'SIGABRT (aborted)'."""
    if returncode >= 0:
        return f"code {returncode}"
    try:
        sig = signal.Signals(-returncode)
    except ValueError:
        return f"signal {-returncode}"
    if sig in KILLED_FROM_OUTSIDE:
        return f"{sig.name} (killed from outside the job)"
    return f"{sig.name} ({'aborted' if sig == signal.SIGABRT else 'crashed'})"


def failure_line(outcome: Outcome, processes: int) -> str:
    others = processes - 1
    line = f"error: process {outcome.index} exited with {describe(outcome.returncode)}; stopped the other {others}"
    if outcome.also:
        after = ", ".join(f"process {i} with {describe(rc).split(' (')[0]}" for i, rc in outcome.also)
        line += f" (already gone by then, as a consequence: {after})"
    return line


# ---- the job ------------------------------------------------------------------------------

class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def run_job(job: Job, *, pick_port: Callable[[], int] = free_port, err: IO | None = None) -> int:
    """Start the workers, watch them, stop them all on the first failure, the deadline or a
    SIGINT/SIGTERM to the launcher; retry a coordinator port found taken. Returns the exit
    status: 0, 1 (a failure, the deadline) or 128 + the signal."""
    err = err or sys.stderr
    env = worker_env(job.processes, job.devices)
    deadline = None if job.timeout is None else time.monotonic() + job.timeout
    port = job.port or pick_port()
    workers: list[Worker] = []
    handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for attempt in range(PORT_RETRIES + 1):
            started = time.monotonic()
            workers = [start_worker(worker_command(job, port, i), env, i) for i in range(job.processes)]
            outcome = watch([w.process for w in workers], deadline)
            clash = (outcome.kind == "failed" and outcome.index == 0 and attempt < PORT_RETRIES
                     and time.monotonic() - started < CLASH_WINDOW_SECONDS
                     and (outcome.returncode == -signal.SIGSEGV or _says_clash(workers[0])))
            if not clash:
                break
            stop([w.process for w in workers])
            _join(workers)
            new_port = pick_port()
            print(f"launch: coordinator port {port} is taken; retrying on port {new_port} "
                  f"({attempt + 1} of {PORT_RETRIES})", file=err, flush=True)
            port = new_port
        if outcome.kind == "done":
            _join(workers)
            return 0
        stop([w.process for w in workers])
        _join(workers)
        if outcome.kind == "deadline":
            print(f"error: the job ran past --timeout-seconds {job.timeout:g}; stopped its "
                  f"{job.processes} process{'es' if job.processes > 1 else ''}", file=err, flush=True)
        else:
            print(failure_line(outcome, job.processes), file=err, flush=True)
        return 1
    except Interrupted as stopped:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop([w.process for w in workers])
        _join(workers)
        print(f"error: launcher interrupted by {signal.Signals(stopped.signum).name}; stopped the "
              f"{len(workers)} processes", file=err, flush=True)
        return 128 + stopped.signum
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _says_clash(worker: Worker) -> bool:
    worker.readers[0].join(timeout=2)  # the last lines of a process that just exited
    return any(marker in worker.tail() for marker in CLASH_MARKERS)


def _join(workers: Sequence[Worker]) -> None:
    for worker in workers:
        for reader in worker.readers:
            reader.join(timeout=2)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        job = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"error: python -m experiments.launch: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(run_job(job))


if __name__ == "__main__":
    main()

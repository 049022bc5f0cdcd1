"""Several processes training one model: the settings (`DistributedSpec`), where they come
from (flags, or Slurm / Open MPI / Cloud TPU), and `initialize`, which joins the processes
with `jax.distributed.initialize` before anything runs on JAX.

    spec = spec_from_args("10.0.0.1:8476", 2, 0)   # or (None, None, None): detect / one process
    prepare_process(devices=1, distributed=spec)   # molml_jax.process; calls initialize(spec)

Everything is validated before any JAX call, and the usual failures become one-line
`InputError`s: JAX reports a missing coordinator or a taken port by aborting the process
(SIGABRT after the init timeout; SIGSEGV for the port), so `initialize` checks both itself
first. jax is not imported by this module until `initialize` runs.

Timeouts (whole seconds) default to JAX's, suited to a cluster; the environment overrides
them (experiments.launch sets them small on one machine):
    MOLML_DISTRIBUTED_INIT_TIMEOUT       all processes registered with the coordinator (300)
    MOLML_DISTRIBUTED_HEARTBEAT_TIMEOUT  a silent process is declared dead after this (100)
    MOLML_DISTRIBUTED_SHUTDOWN_TIMEOUT   the exit barrier waits this long for the others (300)
MOLML_DISTRIBUTED=auto asks JAX's own cluster detection when nothing else is found (a GCE
TPU VM slice, detected only through its metadata server).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import socket
import sys
import time
import traceback
from typing import Iterator

from molml_jax.errors import InputError

_joined = False  # set by initialize: this process is one of a multi-process job

TIMEOUT_VARIABLES = {
    "init_timeout": ("MOLML_DISTRIBUTED_INIT_TIMEOUT", 300),
    "heartbeat_timeout": ("MOLML_DISTRIBUTED_HEARTBEAT_TIMEOUT", 100),
    "shutdown_timeout": ("MOLML_DISTRIBUTED_SHUTDOWN_TIMEOUT", 300),
}


def _timeout_from_env(name: str) -> int:
    variable, default = TIMEOUT_VARIABLES[name]
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"{variable}={text!r} is not a whole number of seconds") from None
    if value < 1:
        raise InputError(f"{variable}={value} must be at least 1 second")
    return value


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
    """How this process joins a multi-process job.

    coordinator: "HOST:PORT" of process 0's coordination service; None lets JAX find it
    (`cluster`: "slurm", "ompi" or "auto"). num_processes / process_id: None only when
    JAX detects them ("auto"). Timeouts in seconds (see the module's docstring)."""

    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    cluster: str = "explicit"
    init_timeout: int = dataclasses.field(default_factory=lambda: _timeout_from_env("init_timeout"))
    heartbeat_timeout: int = dataclasses.field(default_factory=lambda: _timeout_from_env("heartbeat_timeout"))
    shutdown_timeout: int = dataclasses.field(default_factory=lambda: _timeout_from_env("shutdown_timeout"))


def split_address(text: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as '[::1]:PORT') -> (host, port); InputError if malformed."""
    host, sep, port_text = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    bad = not sep or not host or not port_text.isdigit() or any(c.isspace() for c in host)
    if bad or not 1 <= int(port_text) <= 65535:
        raise InputError(f"--coordinator {text!r} is not HOST:PORT (a port 1-65535), e.g. 10.0.0.1:8476")
    return host, int(port_text)


def _check_counts(num_processes: int, process_id: int, origin: str) -> None:
    if num_processes < 1:
        raise InputError(f"{origin}: the number of processes must be at least 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise InputError(f"{origin}: process id {process_id} is out of range 0..{num_processes - 1}")


def _env_int(name: str) -> int:
    if name not in os.environ:
        raise InputError(f"{name} is not set (a multi-process job's environment is incomplete)")
    try:
        return int(os.environ[name])
    except ValueError:
        raise InputError(f"{name}={os.environ[name]!r} is not a whole number") from None


def detect() -> DistributedSpec | None:
    """A multi-process job started by Slurm (srun with several tasks), Open MPI (mpirun) or
    on several Cloud TPU hosts; None for a single process. The variables are the ones JAX's
    own cluster detection reads, which then finds the coordinator."""
    env = os.environ
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(v in env for v in slurm) and _env_int("SLURM_NTASKS") > 1:
        spec = DistributedSpec(None, _env_int("SLURM_NTASKS"), _env_int("SLURM_PROCID"), cluster="slurm")
    elif "OMPI_COMM_WORLD_SIZE" in env and _env_int("OMPI_COMM_WORLD_SIZE") > 1:
        if "OMPI_MCA_orte_hnp_uri" not in env:  # JAX finds the coordinator there (Open MPI < 5)
            raise InputError("started by mpirun without OMPI_MCA_orte_hnp_uri (Open MPI 5?): "
                             "give --coordinator HOST:PORT --num-processes N --process-id I")
        spec = DistributedSpec(None, _env_int("OMPI_COMM_WORLD_SIZE"), _env_int("OMPI_COMM_WORLD_RANK"), cluster="ompi")
    elif len(env.get("TPU_PROCESS_ADDRESSES", env.get("TPU_WORKER_HOSTNAMES", "")).split(",")) > 1:
        return DistributedSpec(None, None, None, cluster="auto")  # JAX reads the TPU slice's ids
    elif env.get("MOLML_DISTRIBUTED", "").strip().lower() == "auto":
        return DistributedSpec(None, None, None, cluster="auto")
    else:
        return None
    _check_counts(spec.num_processes, spec.process_id, f"{spec.cluster} environment")
    return spec


def spec_from_args(coordinator: str | None, num_processes: int | None,
                   process_id: int | None) -> DistributedSpec | None:
    """The three flags -> a spec; none of them -> `detect()`; InputError (one line) for
    some but not all, a process id outside 0..N-1, N < 1, a malformed HOST:PORT or a bad
    timeout variable. Touches no JAX."""
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if all(v is None for v in given.values()):
        return detect()
    missing = [name for name, v in given.items() if v is None]
    if missing:
        raise InputError(f"{', '.join(missing)} missing: a multi-process run needs --coordinator HOST:PORT, "
                         "--num-processes N and --process-id I (or none of them: one process, or detected)")
    split_address(coordinator)
    _check_counts(num_processes, process_id, "--num-processes/--process-id")
    return DistributedSpec(coordinator.strip(), num_processes, process_id)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind_address(host: str, port: int) -> str | None:
    """Where process 0's coordination service listens: only the loopback interface for a
    local job (nothing on the network can reach it); JAX's default (all interfaces) else."""
    if _is_loopback(host):
        return f"{'[::1]' if ':' in host else '127.0.0.1'}:{port}"
    return None


def check_port_free(host: str, port: int) -> None:
    """InputError if process 0 could not listen on the port (JAX would segfault instead)."""
    loopback = _is_loopback(host)
    family = socket.AF_INET6 if loopback and ":" in host else (socket.AF_INET if loopback else socket.AF_INET6)
    where = ("::1" if ":" in host else "127.0.0.1") if loopback else "::"
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # as gRPC does: a port in TIME_WAIT is usable, one with a listener is not
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((where, port))
    except OSError as err:
        if family == socket.AF_INET6 and not loopback and err.errno == getattr(os, "EAFNOSUPPORT", None):
            return  # no IPv6 here: let JAX try
        raise InputError(f"coordinator port {port} is already in use ({err.strerror}); "
                         "pick another --coordinator port") from None


def wait_for_coordinator(host: str, port: int, timeout: float) -> None:
    """Retry a TCP connect to process 0 until it answers; InputError after `timeout` s
    (JAX would abort the process with a stack trace instead)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise InputError(f"coordinator {host}:{port} unreachable after {timeout:g} s "
                                 "(is process 0 running?)") from None
            time.sleep(0.2)


def _accepted(function, **kwargs) -> dict:
    """The keyword arguments this JAX version's function takes (names change between
    versions; a timeout it does not know is left to its default)."""
    import inspect

    params = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def initialize(spec: DistributedSpec | None) -> None:
    """Join the job: `jax.distributed.initialize` with the spec's timeouts (nothing for
    None). Must run before any JAX computation or device query. An explicit coordinator is
    checked first: process 0's port must be free, the others wait (up to the init timeout)
    until process 0 listens; InputError otherwise."""
    if spec is None:
        return
    kwargs: dict = {"initialization_timeout": spec.init_timeout,
                    "heartbeat_timeout_seconds": spec.heartbeat_timeout,
                    "shutdown_timeout_seconds": spec.shutdown_timeout}
    if spec.coordinator is not None:
        host, port = split_address(spec.coordinator)
        if spec.process_id == 0:
            check_port_free(host, port)
            bind = _bind_address(host, port)
            if bind:
                kwargs["coordinator_bind_address"] = bind
        else:
            wait_for_coordinator(host, port, spec.init_timeout)
        kwargs.update(coordinator_address=spec.coordinator, num_processes=spec.num_processes,
                      process_id=spec.process_id, cluster_detection_method="deactivate")
    import jax

    global _joined
    jax.distributed.initialize(**_accepted(jax.distributed.initialize, **kwargs))
    _joined = True


@contextlib.contextmanager
def leave_at_once_on_error() -> Iterator[None]:
    """In a multi-process job, a process that fails (an exception, a non-zero SystemExit)
    exits at once with its status, skipping the exit barrier of jax.distributed.shutdown:
    that barrier would hold it for the shutdown timeout while its peers wait in a collective
    it will never join, and a launcher or scheduler sees the failure only when it exits.
    Does nothing in a single-process run."""
    try:
        yield
    except SystemExit as stop:
        if _joined and stop.code not in (None, 0):
            if not isinstance(stop.code, int):
                print(stop.code, file=sys.stderr)
            _leave(stop.code if isinstance(stop.code, int) else 1)
        raise
    except BaseException as error:
        if _joined:
            traceback.print_exc()
            _leave(130 if isinstance(error, KeyboardInterrupt) else 1)
        raise


def _leave(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def process_index() -> int:
    """This process's index, 0..process_count() - 1 (0 in a single-process run)."""
    import jax

    return jax.process_index()


def process_count() -> int:
    """The number of processes in the job (1 in a single-process run)."""
    import jax

    return jax.process_count()


def is_primary() -> bool:
    """Process 0: the one that writes the run folder and prints the results."""
    return process_index() == 0

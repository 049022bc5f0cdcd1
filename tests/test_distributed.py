"""Multi-process jobs: the --coordinator/--num-processes/--process-id checks, a coordinator
that never answers, and experiments.launch (results of a psum across processes, a worker
that dies or fails, a deadline, a taken port).

Every JAX process here is a fresh subprocess: JAX in pytest's own process has started its
backend, and jax.distributed.initialize must come before that.
"""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from experiments import launch
from molml_jax.distributed import DistributedSpec, spec_from_args
from molml_jax.errors import InputError

from conftest import REPO

# joins the job, then: process --fail exits 3; process --sleeper sleeps; the rest psum
# (process index + 1) over every global device
WORKER = textwrap.dedent('''
    import argparse, os, sys, time
    from pathlib import Path
    from molml_jax.distributed import initialize, leave_at_once_on_error, spec_from_args

    p = argparse.ArgumentParser()
    p.add_argument("--coordinator"); p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int); p.add_argument("--ready-dir")
    p.add_argument("--fail", type=int); p.add_argument("--sleeper", type=int)
    a = p.parse_args()
    initialize(spec_from_args(a.coordinator, a.num_processes, a.process_id))
    import jax, jax.numpy as jnp
    with leave_at_once_on_error():
        if a.ready_dir:
            Path(a.ready_dir, f"ready{a.process_id}").write_text(str(os.getpid()))
        if a.fail == a.process_id:
            sys.exit(3)
        if a.sleeper == a.process_id:
            time.sleep(120)
        x = jnp.full((jax.local_device_count(),), jax.process_index() + 1.0)
        total = jax.pmap(lambda v: jax.lax.psum(v, "i"), axis_name="i")(x)
        print(f"process {jax.process_index()} of {jax.process_count()}: "
              f"{jax.device_count()} devices, psum {float(total[0]):g}", flush=True)
''')


@pytest.fixture
def worker_env(tmp_path):
    """Environment for the launcher: the test worker module importable, no forced devices."""
    (tmp_path / "psum_worker.py").write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    env.pop("XLA_FLAGS", None)
    return env


def run_launch(env, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "experiments.launch", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ---- the flags ------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"], "out of range 0..1"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2"], "--process-id missing"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "is not HOST:PORT"),
])
def test_cli_rejects_bad_multi_process_flags(flags, message):
    result = subprocess.run([sys.executable, "-m", "experiments.dna", "train", *flags], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:")
    assert message in result.stderr


def test_spec_from_flags_and_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_", "TPU_", "MOLML_DISTRIBUTED")):
            monkeypatch.delenv(name)
    assert spec_from_args(None, None, None) is None
    spec = spec_from_args("10.0.0.1:8476", 4, 3)
    assert (spec.coordinator, spec.num_processes, spec.process_id, spec.init_timeout) == ("10.0.0.1:8476", 4, 3, 300)
    for bad in [("10.0.0.1:0", 2, 0), ("10.0.0.1:8476", 0, 0), ("10.0.0.1:8476", 2, -1), (None, 2, 0)]:
        with pytest.raises(InputError):
            spec_from_args(*bad)
    monkeypatch.setenv("MOLML_DISTRIBUTED_INIT_TIMEOUT", "7")
    assert DistributedSpec("h:1", 2, 0).init_timeout == 7
    monkeypatch.setenv("MOLML_DISTRIBUTED_INIT_TIMEOUT", "soon")
    with pytest.raises(InputError, match="MOLML_DISTRIBUTED_INIT_TIMEOUT"):
        spec_from_args("h:1", 2, 0)
    monkeypatch.delenv("MOLML_DISTRIBUTED_INIT_TIMEOUT")
    slurm = {"SLURM_JOB_ID": "17", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "2",
             "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    spec = spec_from_args(None, None, None)
    assert (spec.cluster, spec.coordinator, spec.num_processes, spec.process_id) == ("slurm", None, 2, 1)
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: an ordinary run
    assert spec_from_args(None, None, None) is None


def test_unreachable_coordinator_is_one_line_and_exit_2():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, MOLML_DISTRIBUTED_INIT_TIMEOUT="2")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "experiments.dna", "train", "--coordinator", f"127.0.0.1:{port}",
                             "--num-processes", "2", "--process-id", "1"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr == f"error: coordinator 127.0.0.1:{port} unreachable after 2 s (is process 0 running?)\n"
    assert time.monotonic() - start < 15


# ---- the launcher ---------------------------------------------------------------------------

def test_launcher_rejects_bad_input(worker_env):
    for args, message in [(["--processes", "2", "--"], "no module"), (["--processes", "0", "--", "psum_worker"], "at least 1"),
                          (["--processes", "2", "--", "experiments.nonexistent"], "no module named")]:
        result = run_launch(worker_env, *args)
        assert result.returncode == 2 and error_lines(result.stderr) == result.stderr.splitlines()
        assert message in result.stderr


def test_launcher_worker_commands():
    job = launch.parse_args(["--processes", "2", "--devices-per-process", "2", "--", "-m", "experiments.dna", "--epochs", "2"])
    assert (job.module, job.args) == ("experiments.dna", ["--epochs", "2", "--devices", "2"])
    assert launch.with_devices("experiments.dna", ["predict", "--input", "x"], 2) == ["predict", "--input", "x"]
    assert launch.with_devices("experiments.dna", ["sweep", "--devices=2"], 2) == ["sweep", "--devices=2"]
    assert launch.worker_command(job, 1234, 1)[-6:] == ["--coordinator", "127.0.0.1:1234", "--num-processes", "2",
                                                          "--process-id", "1"]
    env = launch.worker_env(2, 1, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_dump_to=x"})
    assert env["XLA_FLAGS"] == "--xla_dump_to=x" and env["MOLML_DISTRIBUTED_INIT_TIMEOUT"] == "60"


def test_watch_reports_the_first_failure():
    ok = subprocess.Popen([sys.executable, "-c", "pass"])
    failing = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(0.2); sys.exit(3)"])
    sleeping = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    outcome = launch.watch([ok, failing, sleeping], deadline=time.monotonic() + 20)
    assert (outcome.kind, outcome.index, outcome.returncode) == ("failed", 1, 3)
    start = time.monotonic()
    launch.stop([ok, failing, sleeping])
    assert sleeping.returncode == -signal.SIGTERM and time.monotonic() - start < 5
    assert launch.failure_line(outcome, 3) == "error: process 1 exited with code 3; stopped the other 2"
    assert launch.describe(-signal.SIGKILL) == "SIGKILL (killed from outside the job)"


@pytest.mark.parametrize("devices, total", [(1, 3), (2, 6)])
def test_launcher_psum_over_all_processes(worker_env, devices, total):
    start = time.monotonic()
    result = run_launch(worker_env, "--processes", "2", "--devices-per-process", str(devices), "--", "psum_worker")
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"process 0 of 2: {2 * devices} devices, psum {total}\n" in result.stdout
    assert f"[process 1] process 1 of 2: {2 * devices} devices, psum {total}\n" in result.stdout
    assert elapsed < 30


def _start_job(env, tmp_path, *worker_args):
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        job = subprocess.Popen([sys.executable, "-m", "experiments.launch", "--processes", "2", "--",
                                "psum_worker", "--ready-dir", str(tmp_path), *worker_args],
                               cwd=REPO, env=env, stdout=out, stderr=err)
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert job.poll() is None and time.monotonic() < deadline, (tmp_path / "err.txt").read_text()[-3000:]
        time.sleep(0.1)
    time.sleep(0.2)  # the pid is written; let both reach the collective / the sleep
    return job, psutil.Process(job.pid).children(recursive=True)


def _assert_stopped(job, workers, tmp_path, started, expected):
    try:
        job.wait(timeout=30)
    except subprocess.TimeoutExpired:
        job.kill()
        raise
    elapsed = time.monotonic() - started
    stderr = (tmp_path / "err.txt").read_text()
    assert job.returncode == 1, stderr[-3000:]
    assert error_lines(stderr)[-1] == expected
    assert elapsed < 30
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    return elapsed


def test_launcher_stops_the_job_when_a_worker_is_killed(worker_env, tmp_path):
    job, workers = _start_job(worker_env, tmp_path, "--sleeper", "1")  # process 0 waits in the psum
    victim = int((tmp_path / "ready1").read_text())
    assert victim in [w.pid for w in workers]
    started = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    _assert_stopped(job, workers, tmp_path, started,
                    "error: process 1 exited with SIGKILL (killed from outside the job); stopped the other 1")


def test_launcher_stops_the_job_when_a_worker_fails(worker_env, tmp_path):
    started = time.monotonic()
    result = run_launch(worker_env, "--processes", "2", "--", "psum_worker", "--fail", "1")
    assert result.returncode == 1
    assert error_lines(result.stderr)[-1] == "error: process 1 exited with code 3; stopped the other 1"
    assert time.monotonic() - started < 30


def test_launcher_deadline_and_interrupt(worker_env, tmp_path):
    result = run_launch(worker_env, "--processes", "2", "--timeout-seconds", "1", "--", "psum_worker", "--sleeper", "1")
    assert result.returncode == 1
    assert error_lines(result.stderr)[-1] == "error: the job ran past --timeout-seconds 1; stopped its 2 processes"
    job, workers = _start_job(worker_env, tmp_path, "--sleeper", "1")
    started = time.monotonic()
    job.send_signal(signal.SIGINT)  # Ctrl-C: the workers are in their own sessions, the launcher stops them
    job.wait(timeout=30)
    assert job.returncode == 130 and time.monotonic() - started < 30
    assert "error: launcher interrupted by SIGINT; stopped the 2 processes" in (tmp_path / "err.txt").read_text()
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


def test_launcher_retries_a_taken_port(worker_env):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_launch(worker_env, "--processes", "2", "--port", str(port), "--", "psum_worker")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"launch: coordinator port {port} is taken; retrying on port" in result.stderr
    assert "psum 3\n" in result.stdout

"""main.py under a real SLURM: a one-node cluster (munged, slurmctld, slurmd) started as root in
a temporary directory for this module. ``srun -n 2`` inside an ``sbatch --requeue`` job forms one
2-process run; ``scancel --signal=TERM`` mid-epoch makes it checkpoint and stop, and
``scontrol requeue`` runs the same batch script again, whose ``--resume auto`` finishes the run
in the same directory, bit for bit as one uninterrupted torchrun run. tests/test_cluster_stops.py
has the same launch simulated (SLURM's variables set by hand), which needs no SLURM.

Skipped, with what is missing, on a machine without SLURM and munge (Debian: ``apt-get install
slurm-wlm munge``) or when not run as root."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO_ROOT, TINY_RUN, child_env, free_port, read_metrics, same_weights, torchrun
from utils.checkpoint import load_checkpoint

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "sinfo", "scontrol", "scancel", "squeue", "srun")
UP_WITHIN_S = 60  # the daemons, until sinfo shows the node idle
JOB_WITHIN_S = 150  # each wait on a job
# 2 epochs of 12 batches of 4 (6 a process with 2 processes), as tests/test_cluster_stops.py's
# 20 steps an epoch on each of the 2 processes: enough left of epoch 2 when scancel's signal
# arrives (through slurmctld, slurmd and the step daemon; CI once saw 5 tiny steps pass first)
RUN = [
    *TINY_RUN,
    "--data_loader_size",
    "4",
    "--nEpochs",
    "2",
    "--maxTranslate",
    "0.05",
    "--syntheticTrain",
    "160",
]


def find(name: str) -> str | None:
    """``name`` on PATH; the daemons also in /usr/sbin and /sbin, where a non-root PATH lacks them."""
    extra = os.pathsep + os.pathsep.join(("/usr/sbin", "/sbin")) if name in DAEMONS else ""
    return shutil.which(name, path=os.environ.get("PATH", os.defpath) + extra)


@dataclass
class Slurm:
    root: Path
    conf: Path
    host: str
    tools: dict[str, str]
    env: dict[str, str]  # SLURM_CONF and the master's address, for the commands and the jobs

    def command(self, *args: str, timeout: float = 30, check: bool = True) -> str:
        """A SLURM client (``args[0]``: sbatch, scontrol, ...) against this cluster; its stdout."""
        result = subprocess.run(
            [self.tools[args[0]], *args[1:]], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{shlex.join(args)}: status {result.returncode}\n{result.stderr}{self.logs()}"
            )
        return result.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, Restarts, ExitCode, ...)."""
        line = self.command("scontrol", "show", "job", "--oneliner", job_id)
        return dict(re.findall(r"(\w+)=(\S*)", line))

    def wait_job(self, job_id: str, done, what: str) -> dict[str, str]:
        """Poll the job until ``done(fields)``, at most JOB_WITHIN_S."""
        deadline = time.monotonic() + JOB_WITHIN_S
        while time.monotonic() < deadline:
            fields = self.job(job_id)
            if done(fields):
                return fields
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} not {what} within {JOB_WITHIN_S} s: {fields}{self.logs()}")

    def logs(self) -> str:
        tails = []
        for log in sorted((self.root / "log").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            tails.append(f"\n--- {log.name} ---\n" + "\n".join(lines))
        return "".join(tails)


def stop(processes: list[subprocess.Popen]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.terminate()
    for process in reversed(processes):
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def kill_leftovers(conf: Path) -> None:
    """Every process that carries this cluster's SLURM_CONF (slurmstepd, job tasks) and is still
    alive: killed by its pid. This process does not carry it."""
    marker = f"SLURM_CONF={conf}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def slurm_conf(root: Path, host: str, node: str, socket_path: Path, ports: tuple[int, int]) -> str:
    return "\n".join(
        [
            "ClusterName=posetest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ports[0]}",
            f"SlurmdPort={ports[1]}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # a requeued job may start only cred_expire s later (120 by default; 5 at least)
            f"AuthInfo=socket={socket_path},cred_expire=5",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            # the backfill scheduler starts it then, at its next pass (every 30 s by default)
            "SchedulerType=sched/backfill",
            "SchedulerParameters=bf_interval=1",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            "JobRequeue=1",
            "MailProg=/bin/true",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            f"PlugStackConfig={root / 'plugstack.conf'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # the node as slurmd -C sees it (a node with fewer CPUs than configured is drained)
            f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES",
            "",
        ]
    )


@pytest.fixture(scope="module")
def slurm() -> Iterator[Slurm]:
    """A one-node SLURM cluster of its own (ports, munge socket, state and logs in a temporary
    directory), torn down after the module: jobs cancelled, daemons and leftovers killed."""
    if os.geteuid() != 0:
        pytest.skip("a real SLURM cluster needs root (slurmd runs the jobs' tasks as their user)")
    tools = {name: find(name) for name in (*DAEMONS, *CLIENTS)}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        pytest.skip(
            f"SLURM/munge not installed: {', '.join(missing)} not found (apt-get install slurm-wlm munge)"
        )
    host = socket.gethostname().split(".")[0]
    probe = subprocess.run([tools["slurmd"], "-C"], capture_output=True, text=True, timeout=30)
    node = next((line for line in probe.stdout.splitlines() if line.startswith("NodeName=")), None)
    if probe.returncode != 0 or node is None:
        pytest.skip(f"slurmd -C cannot describe this node: {probe.stderr.strip()[-300:]}")
    node = re.sub(r" RealMemory=\d+", "", f"NodeName={host} " + node.split(" ", 1)[1])

    # munged wants its socket's directory and every one above it searchable by all (pytest's
    # temporary directories are 0700), and no file or directory of its own writable by others
    root = Path(tempfile.mkdtemp(prefix="pose-slurm-"))
    os.chmod(root, 0o755)
    for folder in ("munge", "state", "spool", "log", "run"):
        (root / folder).mkdir(mode=0o755)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(128))  # what mungekey --create writes (1024 random bits)
    os.chmod(key, 0o600)
    munge_socket = root / "munge" / "munge.socket"
    conf = root / "slurm.conf"
    (root / "plugstack.conf").write_text("")  # not /etc/slurm's
    conf.write_text(slurm_conf(root, host, node, munge_socket, (free_port(), free_port())))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        socket.gethostbyname(host)
    except OSError:  # srun tasks would take the node's name as MASTER_ADDR
        env["MASTER_ADDR"] = "127.0.0.1"
    cluster = Slurm(root, conf, host, tools, env)

    daemons: list[subprocess.Popen] = []
    try:
        daemons.append(
            subprocess.Popen(
                [
                    tools["munged"],
                    "--foreground",
                    f"--socket={munge_socket}",
                    f"--key-file={key}",
                    f"--pid-file={root / 'munge' / 'munged.pid'}",
                    f"--log-file={root / 'log' / 'munged.log'}",
                    f"--seed-file={root / 'munge' / 'munged.seed'}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )  # fmt: skip
        )
        deadline = time.monotonic() + 10
        while not munge_socket.exists() and daemons[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not munge_socket.exists():
            stop(daemons)
            pytest.skip(f"munged did not start: {daemons[0].stderr.read().strip()[-500:]}")
        for daemon, extra in (("slurmctld", ["-i"]), ("slurmd", ["-N", host])):
            daemons.append(
                subprocess.Popen(
                    [tools[daemon], "-D", "-f", str(conf), *extra],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                )  # fmt: skip
            )
        deadline, state = time.monotonic() + UP_WITHIN_S, ""
        while time.monotonic() < deadline:
            if any(daemon.poll() is not None for daemon in daemons):
                break
            sinfo = cluster.command("sinfo", "--noheader", "--Node", "--format=%T", check=False, timeout=10)
            state = sinfo.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        if state != "idle":
            exited = [
                f"{name} exited {d.returncode}"
                for name, d in zip(DAEMONS, daemons, strict=False)
                if d.poll() is not None
            ]
            pytest.skip(
                f"SLURM did not come up within {UP_WITHIN_S} s (node state {state or 'unknown'!r}"
                f"{'; ' + ', '.join(exited) if exited else ''}):{cluster.logs()}"
            )
        yield cluster
    finally:
        if all(daemon.poll() is None for daemon in daemons[1:]) and len(daemons) == 3:
            subprocess.run(
                [tools["scancel"], "--full", "--quiet", "--user=root"], env=env, timeout=30, check=False
            )
            time.sleep(1)
        kill_leftovers(conf)
        stop(daemons)
        kill_leftovers(conf)
        shutil.rmtree(root, ignore_errors=True)


def wait_for_line(path: Path, pattern: str, what: str, cluster: Slurm, job_id: str) -> str:
    """The first line of the job's output matching ``pattern``, polled at most JOB_WITHIN_S."""
    deadline = time.monotonic() + JOB_WITHIN_S
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if found := re.search(pattern, text, re.MULTILINE):
            return found.group(0)
        if cluster.job(job_id).get("JobState") not in ("PENDING", "CONFIGURING", "RUNNING"):
            break
        time.sleep(0.2)
    raise AssertionError(f"{what} never appeared: {cluster.job(job_id)}\n{text[-4000:]}{cluster.logs()}")


@pytest.mark.e2e
@pytest.mark.slow
def test_srun_tasks_stopped_by_scancel_and_requeued_finish_as_one_uninterrupted_run(
    slurm: Slurm, tmp_path: Path
) -> None:
    """``sbatch --requeue -n 2`` whose script runs ``srun -n 2 python main.py ... --resume auto``:
    the 2 tasks are one 2-process run; ``scancel --signal=TERM`` (SIGTERM to the step's tasks, not
    to the batch shell) in epoch 2 makes it checkpoint mid-epoch and exit 143; ``scontrol requeue``
    runs the script again, which resumes there and ends as the uninterrupted torchrun run does."""
    straight = tmp_path / "straight"
    result = torchrun(2, *RUN, "--expDir", str(straight), "--expID", "two")
    assert result.returncode == 0, result.stderr[-8000:]

    exp_dir, output = tmp_path / "exp", tmp_path / "job.out"
    command = [sys.executable, "main.py", *RUN, "--progress", "lines", "--expDir", str(exp_dir),
               "--expID", "slurm", "--resume", "auto"]  # fmt: skip
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        'echo "attempt ${SLURM_RESTART_COUNT:-0} of job $SLURM_JOB_ID"\n'
        f"exec {shlex.quote(slurm.tools['srun'])} -n 2 {shlex.join(command)}\n"
    )
    env = {**child_env(), **slurm.env, "MASTER_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"}
    submitted = subprocess.run(
        [slurm.tools["sbatch"], "--parsable", "--requeue", "-n", "2", "--job-name", "pose-slurm-test",
         f"--chdir={REPO_ROOT}", f"--output={output}", "--open-mode=append", str(script)],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr + slurm.logs()
    job_id = submitted.stdout.strip().split(";")[0]

    # mid-epoch 2 (20 steps an epoch on each of the 2 processes): SIGTERM to the step's tasks
    wait_for_line(output, r"^train 2 [12]/20\b.*$", "epoch 2's progress", slurm, job_id)
    slurm.command("scancel", "--signal=TERM", job_id)
    first = slurm.wait_job(job_id, lambda f: f["JobState"] not in ("RUNNING", "COMPLETING"), "stopped")
    text = output.read_text()
    run_dir = exp_dir / "slurm"
    assert first["JobState"] == "FAILED" and first["ExitCode"] == "143:0", f"{first}\n{text[-4000:]}"
    assert "interrupted at epoch 2, batch " in text and "resume with: srun -n 2 python main.py" in text, text[
        -4000:
    ]
    assert "Traceback" not in text, text[-4000:]
    assert load_checkpoint(run_dir / "last.pth")["mid_epoch"]["epoch"] == 2

    # a requeue (as a preemption or node failure brings) runs the same script again
    slurm.command("scontrol", "requeue", job_id)
    last = slurm.wait_job(
        job_id,
        lambda f: f.get("Restarts") == "1" and f["JobState"] not in ("PENDING", "RUNNING", "COMPLETING"),
        "finished after its requeue",
    )
    text = output.read_text()
    assert last["JobState"] == "COMPLETED", f"{last}\n{text[-4000:]}"
    assert f"attempt 0 of job {job_id}" in text and f"attempt 1 of job {job_id}" in text, text[-4000:]
    assert "Traceback" not in text, text[-4000:]

    assert [p.name for p in exp_dir.iterdir()] == ["slurm"]  # one run directory, both times
    assert "2 processes: effective batch 8" in (run_dir / "log.txt").read_text()
    final = load_checkpoint(run_dir / "last.pth")
    assert final["epoch"] == 2 and final["launch"] == "srun -n 2 python main.py"
    records = read_metrics(run_dir)
    assert [(r["epoch"], r["split"]) for r in records] == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    same_weights(run_dir / "last.pth", straight / "two" / "last.pth")
    assert records == read_metrics(straight / "two")

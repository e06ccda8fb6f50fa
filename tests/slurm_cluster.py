"""A real one-node SLURM cluster for the tests, started from nothing in a temporary directory.

How (facts measured on our machines: /work/shared/notes/slurm-single-node.md): Debian's `slurm-wlm`
and `munge`, run as root without systemd. Everything lives under one scratch directory, so the
machine's own /etc/munge and /etc/slurm are neither read nor changed and a second cluster (another
test session) does not collide with this one:

- munged with its own 1,024-byte key, socket, pid, log and seed files (`--force`: the scratch
  directory sits under the world-writable /tmp, which munged would otherwise refuse);
- slurm.conf pointing at that socket (`AuthInfo=socket=...`), `SlurmUser=root`, proctrack/linuxproc
  and task/none (no cgroups needed), cons_tres with CR_Core_Memory, free TCP ports, one node (this
  host, `CPUs=nproc`, 90 % of its memory) in one default partition; `JobRequeue=1` so batch jobs can
  be requeued, `MinJobAge=600` so `scontrol show job` still knows finished jobs;
- slurmctld, then slurmd, each with `-f slurm.conf`; every command the tests run gets
  `SLURM_CONF` (`SlurmCluster.env`), ready once `sinfo` reports the node idle.

`slurm_cluster` is a session-scoped fixture (import it into a test module): the cluster starts once
and its daemons are stopped by the pids in their pid files when the session ends. Without root or
without the binaries the fixture skips, naming what is missing (.ci/install-slurm-deps installs them).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scontrol", "scancel")
PARTITION = "debug"
READY_TIMEOUT_S = 60.0


def skip_reason() -> str | None:
    """Why a real SLURM cluster cannot be started here, or None."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return (f"SLURM/munge not installed (missing {', '.join(missing)}): "
                "apt-get install slurm-wlm munge (.ci/install-slurm-deps)")
    if os.geteuid() != 0:
        return "the one-node SLURM cluster runs its daemons as root (SlurmUser=root); not root here"
    return None


@dataclass
class SlurmCluster:
    """A running one-node cluster: its scratch directory, config and the environment that reaches it."""

    root: Path
    conf: Path
    node: str
    pid_files: list[Path] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus SLURM_CONF: what every SLURM command (and dask-jobqueue's sbatch) needs."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}: {result.stdout}{result.stderr}")
        return result

    def sbatch(self, *args: str) -> str:
        """Submit (sbatch --parsable ...); the job id."""
        return self.run("sbatch", "--parsable", *args).stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as {key: value} (JobState, Restarts, Reason, BatchFlag, ...)."""
        text = self.run("scontrol", "-o", "show", "job", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait_for_state(self, job_id: str, states: tuple[str, ...], timeout: float = 120.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} never reached {states}: {info}\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        """The tails of the daemons' logs, for a failure message."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.root / "log" / name
            if path.is_file():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, then end the daemons by their pids (SIGTERM, SIGKILL after 15 s)."""
        if (self.root / "slurmctld.pid").is_file():
            self.run("scancel", "--user", "root", check=False)
        for pid_file in reversed(self.pid_files):  # slurmd, slurmctld, munged
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            _end(pid)


def _end(pid: int, grace_s: float = 15.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.9)
    return 4000


def start_slurm_cluster(root: Path) -> SlurmCluster:
    """munged, slurmctld and slurmd under `root`, the node idle; AssertionError with the logs if not."""
    root = Path(root)
    for name in ("munge", "state", "spool", "log"):
        (root / name).mkdir(parents=True, exist_ok=True)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    (root / "munge").chmod(0o700)
    run_dir = root / "munge-run"  # the socket's directory must let clients in (munged warns otherwise)
    run_dir.mkdir(exist_ok=True)
    run_dir.chmod(0o755)
    socket_path = run_dir / "munge.socket"
    node = socket.gethostname().split(".")[0]
    ctld_port, node_port = _free_ports(2)
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=thesislibtest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SlurmctldPort={ctld_port}
SlurmdPort={node_port}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
ReturnToService=2
JobRequeue=1
MinJobAge=600
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    cluster = SlurmCluster(root=root, conf=conf, node=node)
    munge_pid = root / "munge" / "munged.pid"
    subprocess.run(["munged", "--force", f"--key-file={key}", f"--socket={socket_path}", f"--pid-file={munge_pid}",
                    f"--log-file={root / 'log' / 'munged.log'}", f"--seed-file={root / 'munge' / 'munged.seed'}"],
                   check=True, capture_output=True, text=True, timeout=30)
    cluster.pid_files.append(munge_pid)
    try:
        for daemon, pid_file in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
            started = subprocess.run([daemon, "-f", str(conf)], env=cluster.env, capture_output=True, text=True,
                                     timeout=30, check=False)
            if started.returncode != 0:
                raise AssertionError(f"{daemon} did not start ({started.returncode}): {started.stderr}\n{cluster.logs()}")
            cluster.pid_files.append(root / pid_file)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            state = cluster.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return cluster
            if time.monotonic() > deadline:
                raise AssertionError(f"the SLURM node is {state!r}, not idle, after {READY_TIMEOUT_S:.0f} s\n{cluster.logs()}")
            time.sleep(0.2)
    except BaseException:
        cluster.stop()
        raise


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM cluster for the session (skipped, with the reason, where it cannot run)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    # pytest's temporary paths are short enough for the munge socket (a unix socket path: 107 bytes at most).
    cluster = start_slurm_cluster(Path(tmp_path_factory.mktemp("slurm")))
    try:
        yield cluster
    finally:
        cluster.stop()

"""A real one-node SLURM cluster for tests: munged, slurmctld and slurmd started from a temp dir, stopped by pid.

`slurm_cluster` (a pytest fixture) installs Debian's slurm-wlm and munge when they are missing (as CI does
on a fresh machine), or skips with the reason when it cannot. Everything the cluster writes (config,
state, spool, logs, pid files) lives in its temp dir; the only thing outside is munged's socket in
/run/munge, and munged is stopped again only if this module started it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers_launch import RENDEZVOUS_VARS

DEBIAN_PACKAGES = ("slurm-wlm", "munge")
PROGRAMS = ("sbatch", "srun", "scontrol", "scancel", "sinfo", "squeue", "slurmctld", "slurmd", "munged", "munge")
MUNGE_RUN_DIR = Path("/run/munge")


def install_reason() -> str | None:
    """None once the SLURM and munge programs are on PATH (installing them with apt-get if needed),
    else why they cannot be."""
    if all(shutil.which(p) for p in PROGRAMS):
        return None
    if os.geteuid() != 0:
        return "slurm-wlm/munge are not installed and installing them needs root"
    if not shutil.which("apt-get"):
        return "slurm-wlm/munge are not installed and there is no apt-get to install them"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, env=env, timeout=600)
    proc = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *DEBIAN_PACKAGES],
                          capture_output=True, text=True, env=env, timeout=900)
    missing = [p for p in PROGRAMS if not shutil.which(p)]
    if missing:
        return (f"apt-get install {' '.join(DEBIAN_PACKAGES)} failed (exit {proc.returncode}); still missing "
                f"{', '.join(missing)}: {proc.stderr.strip()[-500:]}")
    return None


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports (bound together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def client_env(**extra) -> dict[str, str]:
    """The caller's environment without SLURM variables of any enclosing job (a test run inside a SLURM
    allocation would otherwise submit into it)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k not in RENDEZVOUS_VARS}
    env.update({k: str(v) for k, v in extra.items()})
    return env


class SlurmCluster:
    """One slurmctld and one slurmd (this host, all its CPUs, one partition `debug`) under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.daemons: dict[str, subprocess.Popen] = {}
        self.munged_pid: int | None = None

    # -- start / stop ------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        for name in ("state", "spool", "log"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.config_text())
        self.start_munge()
        for daemon in ("slurmctld", "slurmd"):
            # -D: stay in the foreground, so the pid we hold is the daemon's own.
            log = open(self.root / "log" / f"{daemon}.stdout", "wb")
            self.daemons[daemon] = subprocess.Popen([daemon, "-D", "-f", str(self.conf)], stdout=log,
                                                    stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, proc in self.daemons.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {proc.returncode}:\n{self.logs()}")
            state = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the node did not become idle in {timeout:.0f} s (sinfo: {state!r}):\n{self.logs()}")

    def stop(self) -> None:
        """Cancel what is left, then stop the daemons this object started, by pid."""
        if self.daemons.get("slurmctld") and self.daemons["slurmctld"].poll() is None:
            self.run(["scancel", "--full", "--user", str(os.getuid())], check=False)
            deadline = time.time() + 30
            while time.time() < deadline and self.run(["squeue", "-h"], check=False).stdout.strip():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld"):
            proc = self.daemons.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.munged_pid is not None:
            _terminate_pid(self.munged_pid)
            self.munged_pid = None

    def start_munge(self) -> None:
        """Use a munged that already answers on /run/munge; otherwise start one as user munge."""
        if self._munge_works():
            return
        key = Path("/etc/munge/munge.key")
        if not key.is_file():
            raise RuntimeError(f"{key} is missing (the munge package creates it; `mungekey -c` makes one)")
        MUNGE_RUN_DIR.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_RUN_DIR, "munge", "munge")
        MUNGE_RUN_DIR.chmod(0o755)
        pid_file = MUNGE_RUN_DIR / "munged.pid"
        subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True, capture_output=True, timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline and not self._munge_works():
            time.sleep(0.2)
        if not self._munge_works():
            raise RuntimeError("munged started but `munge -n | unmunge` fails")
        self.munged_pid = int(pid_file.read_text().split()[0])

    @staticmethod
    def _munge_works() -> bool:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        return cred.returncode == 0 and subprocess.run(
            ["unmunge"], input=cred.stdout, capture_output=True, timeout=10).returncode == 0

    def config_text(self) -> str:
        node = node_line()
        ctld_port, slurmd_port = free_ports(2)
        r = self.root
        return "\n".join([
            "ClusterName=dist-lacl-test",
            f"SlurmctldHost={node['NodeName']}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            # A requeued job becomes eligible cred_expire (default 120) s after the requeue; 10 s keeps
            # the requeue test short. Credentials are checked within seconds on one node.
            "AuthInfo=cred_expire=10",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            # No systemd or cgroup delegation here: track processes by parentage, bind nothing.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            # Look at pending jobs every few seconds (default: every 30-60 s): a requeued job starts soon
            # after it becomes eligible.
            "SchedulerParameters=bf_interval=2,sched_interval=2",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobRequeue=1",
            "ReturnToService=2",
            "KillWait=10",
            f"NodeName={node['NodeName']} NodeAddr=127.0.0.1 CPUs={node['CPUs']} "
            f"RealMemory={int(node['RealMemory']) * 9 // 10} State=UNKNOWN",
            f"PartitionName=debug Nodes={node['NodeName']} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    # -- clients -------------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Variables a client needs to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, cmd: list[str], check: bool = True, timeout: float = 60, env: dict | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env=client_env(**self.env, **(env or {})))
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as {field: value} (JobState, Restarts, ExitCode, ...)."""
        text = self.run(["scontrol", "show", "job", "-o", str(job_id)]).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait_for(self, predicate, timeout: float, what: str, poll: float = 0.5):
        """Poll `predicate()` until it returns something truthy; fail with the daemons' logs after `timeout`."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(poll)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        out = []
        for path in sorted((self.root / "log").glob("*")):
            out.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)


def node_line() -> dict[str, str]:
    """This host as `slurmd -C` describes it: NodeName (the short hostname), CPUs, RealMemory (MB), ..."""
    text = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True, timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S+)", text.splitlines()[0]))


def _terminate_pid(pid: int, timeout: float = 10) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running one-node cluster (see SlurmCluster); skips, with the reason, where none can be had."""
    reason = install_reason()
    if reason:
        pytest.skip(f"no SLURM cluster: {reason}")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()

"""Real SLURM clusters for tests: munged, slurmctld and slurmd(s) started from a temp dir, stopped by pid.

`slurm_cluster` (a pytest fixture): one node, this host. `slurm_two_nodes`: two nodes on this machine,
each a network namespace with its own hostname and slurmd, joined by a veth pair (see TwoNodeCluster).
Both install Debian's slurm-wlm and munge when they are missing (as CI does on a fresh machine), or skip
with the reason when they cannot. Everything a cluster writes (config, state, spool, logs, pid files)
lives in its temp dir; the only thing outside is munged's socket in /run/munge (shared by all nodes, as
one munge key is on a real cluster), and munged is stopped again only if this module started it.
"""

from __future__ import annotations

import json
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

    nodes = 1

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
        for name, argv in self.daemon_commands().items():
            log = open(self.root / "log" / f"{name}.stdout", "wb")
            self.daemons[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True)
            log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, proc in self.daemons.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {proc.returncode}:\n{self.logs()}")
            state = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout.split()
            if state == ["idle"] * self.nodes:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the nodes did not become idle in {timeout:.0f} s (sinfo: {state!r}):\n{self.logs()}")

    def daemon_commands(self) -> dict[str, list[str]]:
        """{name: argv} of the daemons to start. -D: stay in the foreground, so the pid we hold is the
        daemon's own."""
        return {daemon: [daemon, "-D", "-f", str(self.conf)] for daemon in ("slurmctld", "slurmd")}

    def stop(self) -> None:
        """Cancel what is left, then stop the daemons this object started, by pid."""
        if self.daemons.get("slurmctld") and self.daemons["slurmctld"].poll() is None:
            self.run(["scancel", "--full", "--user", str(os.getuid())], check=False)
            deadline = time.time() + 30
            while time.time() < deadline and self.run(["squeue", "-h"], check=False).stdout.strip():
                time.sleep(0.5)
        for name in sorted(self.daemons, key=lambda name: name == "slurmctld"):  # slurmd(s) first
            proc = self.daemons.pop(name)
            if proc.poll() is None:
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
        return self.config(f"{node['NodeName']}(127.0.0.1)", ctld_port, slurmd_port, [
            f"NodeName={node['NodeName']} NodeAddr=127.0.0.1 CPUs={node['CPUs']} "
            f"RealMemory={int(node['RealMemory']) * 9 // 10} State=UNKNOWN",
            f"PartitionName=debug Nodes={node['NodeName']} Default=YES MaxTime=INFINITE State=UP"])

    def config(self, controller: str, ctld_port: int, slurmd_port: int, nodes: list[str]) -> str:
        """slurm.conf: the settings that work on these machines, then the node and partition lines."""
        r = self.root
        return "\n".join([
            "ClusterName=dist-lacl-test",
            f"SlurmctldHost={controller}",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            # A requeued job becomes eligible cred_expire (default 120) s after the requeue; 10 s keeps
            # the requeue test short. Credentials are checked within seconds on one node.
            "AuthInfo=cred_expire=10",
            f"StateSaveLocation={r / 'state'}",
            # %n: the node's name, so that several slurmds on one machine keep apart.
            f"SlurmdSpoolDir={r / 'spool' / '%n'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd-%n.log'}",
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
            *nodes,
            "",
        ])

    # -- clients -------------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Variables a client needs to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    client_prefix: list[str] = []  # what a client command runs under (TwoNodeCluster: the first node's network)

    def run(self, cmd: list[str], check: bool = True, timeout: float = 60, env: dict | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.client_prefix, *cmd], capture_output=True, text=True, timeout=timeout, cwd=cwd,
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


class TwoNodeCluster(SlurmCluster):
    """Two SLURM nodes on this machine: `dlacl1` and `dlacl2`, each a network namespace of its own with its
    own hostname (a UTS namespace) and its own slurmd; slurmctld runs on dlacl1; munged is shared.

    The namespaces are joined by one veth pair whose two ends are created inside them, with the private
    addresses 10.213.0.1 and .2 on those two interfaces only: the root namespace gets no interface, address
    or route, so no traffic of the cluster or its jobs leaves the pair. Each node sees a hosts file of its
    own (bind-mounted over /etc/hosts in a private mount namespace) that names both nodes, so that a job's
    MASTER_ADDR=dlacl1 and gloo's own-address lookup resolve to the veth addresses, as DNS would on a real
    cluster. Clients (sbatch, scontrol, ...) run in dlacl1's network namespace, where the controller is.

    Why nsenter and not `ip netns exec`: the latter mounts a fresh /sys for the namespace, which hides the
    cgroup mounts under /sys/fs/cgroup, and slurmd 22.05 then refuses to start even with
    proctrack/linuxproc ("No filesystem mounted on /sys/fs/cgroup ... slurmd initialization failed").
    """

    nodes = 2
    names = ("dlacl1", "dlacl2")
    addrs = ("10.213.0.1", "10.213.0.2")
    PROGRAMS = ("ip", "nsenter", "unshare", "mount", "hostname")

    def __init__(self, root: Path):
        super().__init__(root)
        self.netns = [f"dlacl{os.getpid()}-{i + 1}" for i in range(self.nodes)]  # unique on the machine
        self.made_netns: list[str] = []
        self.hosts = self.root / "hosts"
        self.client_prefix = self.in_netns(0)

    def in_netns(self, node: int) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns[node]}"]

    def on_node(self, node: int, argv: list[str]) -> list[str]:
        """`argv` as node `node` runs it: its network, hostname and hosts file."""
        setup = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'
        return [*self.in_netns(node), "unshare", "--uts", "--mount", "--propagation", "private",
                "sh", "-c", setup, "node-setup", str(self.hosts), self.names[node], *argv]

    def start(self, timeout: float = 60) -> None:
        self.make_network()
        base = Path("/etc/hosts").read_text() if Path("/etc/hosts").is_file() else "127.0.0.1 localhost\n"
        self.hosts.write_text(base.rstrip("\n") + "\n" + "".join(
            f"{addr} {name}\n" for addr, name in zip(self.addrs, self.names)))
        for name in self.names:  # slurmd wants its spool directory to exist
            (self.root / "spool" / name).mkdir(parents=True, exist_ok=True)
        super().start(timeout)

    def make_network(self) -> None:
        """The two namespaces, the veth pair between them, addresses on its two ends only."""
        try:
            for ns in self.netns:
                _ip("netns", "add", ns)
                self.made_netns.append(ns)
            _ip("link", "add", "veth0", "netns", self.netns[0], "type", "veth", "peer", "name", "veth0",
                "netns", self.netns[1])
            for ns, addr in zip(self.netns, self.addrs):
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "veth0")
                _ip("-n", ns, "link", "set", "lo", "up")  # a node reaches its own address through lo
                _ip("-n", ns, "link", "set", "veth0", "up")
        except RuntimeError as e:
            raise NamespaceError(str(e)) from e

    def daemon_commands(self) -> dict[str, list[str]]:
        conf = ["-D", "-f", str(self.conf)]
        return {"slurmctld": self.on_node(0, ["slurmctld", *conf]),
                **{f"slurmd-{name}": self.on_node(i, ["slurmd", *conf]) for i, name in enumerate(self.names)}}

    def config_text(self) -> str:
        # Each node is its own network: the default ports are free there.
        mem = int(node_line()["RealMemory"]) * 9 // 10 // self.nodes
        return self.config(f"{self.names[0]}({self.addrs[0]})", 6817, 6818, [
            *(f"NodeName={name} NodeAddr={addr} CPUs=1 RealMemory={mem} State=UNKNOWN"
              for name, addr in zip(self.names, self.addrs)),
            f"PartitionName=debug Nodes={','.join(self.names)} Default=YES MaxTime=INFINITE State=UP"])

    def stop(self) -> None:
        """The daemons (by pid), then whatever still runs in the namespaces (a job's orphans, by pid),
        then the namespaces, which takes the veth pair with them."""
        try:
            super().stop()
        finally:
            for ns in self.made_netns:
                pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
                for pid in pids:
                    _terminate_pid(int(pid))
            for ns in reversed(self.made_netns):
                subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
            self.made_netns.clear()

    def veth_bytes(self, node: int) -> int:
        """Bytes that node `node` has sent over its end of the pair."""
        out = _ip("-n", self.netns[node], "-s", "-j", "link", "show", "veth0").stdout
        return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])


class NamespaceError(RuntimeError):
    """The machine does not let this process make network namespaces or veth pairs."""


def _ip(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


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


@pytest.fixture(scope="module")
def slurm_two_nodes(tmp_path_factory):
    """A running two-node cluster (see TwoNodeCluster); skips, with the reason, where none can be had."""
    reason = install_reason()
    missing = [p for p in TwoNodeCluster.PROGRAMS if not shutil.which(p)]
    if not reason and missing:
        reason = f"{', '.join(missing)} not found"
    if not reason and os.geteuid() != 0:
        reason = "network namespaces need root"
    if reason:
        pytest.skip(f"no two-node SLURM cluster: {reason}")
    cluster = TwoNodeCluster(tmp_path_factory.mktemp("slurm2"))
    try:
        try:
            cluster.start()
        except NamespaceError as e:
            pytest.skip(f"no two-node SLURM cluster: network namespaces do not work here: {e}")
        yield cluster
    finally:
        cluster.stop()

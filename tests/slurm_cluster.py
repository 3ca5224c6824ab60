"""A real, throw-away SLURM cluster on this machine, for tests that submit sbatch scripts.

Debian's packages (slurmctld, slurmd, slurm-client, munge) run as root with every state,
spool, socket, pid and log file under one directory, on random free ports and a unique
cluster name, so concurrent test runs do not collide and nothing touches /etc.
Two nodes are emulated on one host with ``slurmd -N nX``; their names do not resolve, so
jobs that need a rendezvous address must use ``SlurmCluster.node_addr`` (127.0.0.1).
With ``grace_time`` the cluster preempts as production clusters do: two partitions on the same
nodes, ``low`` (the default) and ``high`` (a higher PriorityTier), PreemptType=preempt/partition_prio,
PreemptMode=REQUEUE: a ``high`` job that needs the CPUs of a ``low`` one has SLURM send the low
job SIGTERM, give it ``grace_time`` seconds (then SIGKILL), and requeue it.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

REQUIRED_BINARIES = ("slurmctld", "slurmd", "munged", "mungekey", "sbatch", "scontrol", "squeue")
INSTALL_HINT = "SLURM not installed: apt-get install slurmctld slurmd slurm-client munge; .ci/run installs it"
# States after which a job never runs again (REQUEUED is not among them: it goes back to PENDING).
TERMINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
     "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT"}
)
ACTIVE_STATES = "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED,RESIZING,SIGNALING,STAGE_OUT"
# A Unix socket path is limited to 107 bytes; slurmd puts "<node>_<job>.<step>" sockets in its spool.
MAX_WORKDIR_LEN = 70
PREEMPTION_GRACE_TIME = 30  # s: a tiny training job stops and checkpoints well within it
# s between SLURM's SIGTERM and its SIGKILL on scancel (SLURM's default is 30): the ranks, their launcher and
# srun must have exited by then; on 2 busy cores a torch process alone takes 2-3 s to tear down.
PREEMPTION_KILL_WAIT = 20
_KEY_VALUE = re.compile(r"(\S+?)=(.*?)(?= \S+?=|$)")


def unavailable() -> str | None:
    """Why no test cluster can run here, or None."""
    if missing := missing_binaries():
        return f"{INSTALL_HINT} (missing: {', '.join(missing)})"
    if os.geteuid() != 0:
        return "the SLURM test cluster runs its daemons as root (SlurmUser=root)"
    return None


def missing_binaries() -> list[str]:
    """The SLURM/munge programs this helper needs that are not on PATH (or in /usr/sbin)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return [b for b in REQUIRED_BINARIES if shutil.which(b, path=path) is None]


def _binary(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin")
    if found is None:
        raise FileNotFoundError(INSTALL_HINT)
    return found


def _free_port(taken: set[int]) -> int:
    """A random port below the ephemeral range (32768+) that nothing listens on right now."""
    for _ in range(200):
        port = random.randint(10000, 32000)
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free TCP port found in 10000-32000")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<{path}: {exc.strerror}>"
    return "\n".join(text[-lines:]) or "<empty>"


def wait_for_path(path: Path, timeout: float = 30.0) -> None:
    """Wait until a job has created ``path`` (e.g. a 'ready' flag written after its trap is set)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not created within {timeout:.0f}s")
        time.sleep(0.1)


def parse_record(line: str) -> dict[str, str]:
    """Parse one `scontrol show ... -o` line (space-separated Key=Value, values may hold '=')."""
    return {m.group(1): m.group(2) for m in _KEY_VALUE.finditer(line.strip())}


class SlurmError(RuntimeError):
    """A job or the cluster did not behave; the message carries the relevant log tails."""


class SlurmCluster:
    """slurmctld + one slurmd per emulated node + munged, all under ``workdir``."""

    node_addr = "127.0.0.1"

    def __init__(self, workdir: Path, nodes: int = 1, cpus_per_node: int = 2, grace_time: int | None = None,
                 kill_wait: int = 5) -> None:
        self.workdir = Path(workdir).resolve()
        if len(str(self.workdir)) > MAX_WORKDIR_LEN:
            raise ValueError(f"workdir path too long for Unix sockets (> {MAX_WORKDIR_LEN}): {self.workdir}")
        self.nodes = [f"n{i + 1}" for i in range(nodes)]
        self.cpus_per_node = cpus_per_node
        self.grace_time, self.kill_wait = grace_time, kill_wait
        self.host = socket.gethostname().split(".")[0]
        self.name = f"t{secrets.token_hex(4)}"
        self.conf = self.workdir / "slurm.conf"
        self.job_dir = self.workdir / "jobs"
        self.log_dir = self.workdir / "log"
        self.run_dir = self.workdir / "run"
        self.munge_socket = self.workdir / "munge" / "munge.socket"
        self.ctld_port = 0
        self.node_ports: dict[str, int] = {}
        self.started = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> SlurmCluster:
        """Start munged, slurmctld and the slurmds, and wait until every node is idle."""
        if missing := missing_binaries():
            raise FileNotFoundError(f"{INSTALL_HINT} (missing: {', '.join(missing)})")
        self.started = True
        try:
            self._start_munge()
            self._write_conf()
            self._daemon([_binary("slurmctld"), "-f", str(self.conf), "-c", "-i"], "slurmctld")
            for node in self.nodes:
                self._daemon([_binary("slurmd"), "-f", str(self.conf), "-N", node], f"slurmd {node}")
            self._wait_idle(timeout)
        except BaseException:
            self._shutdown()
            raise
        return self

    def stop(self, check: bool = True) -> None:
        """Cancel jobs, stop the daemons by pid file, and (``check``) fail if any process of this cluster survived.

        Job processes that escaped their job (e.g. a trap's background child, reparented to
        init) are invisible to proctrack/linuxproc, so they are found by their SLURM_CONF and
        killed either way. Idempotent.
        """
        leftovers = self._shutdown()
        if leftovers and check:
            raise SlurmError("processes of the test cluster outlived it (killed now):\n" + "\n".join(leftovers))

    # -- jobs --------------------------------------------------------------------------------

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for SLURM clients: this cluster's SLURM_CONF, no SLURM_* leaked from outside."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        env["SLURM_CONF"] = str(self.conf)
        env.update(extra or {})
        return env

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command (scontrol, squeue, ...) against this cluster."""
        return subprocess.run(argv, env=self.env(), capture_output=True, text=True, check=check, timeout=60)

    def sbatch(
        self,
        script: Path | str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        sbatch_args: Sequence[str] = (),
        cwd: Path | str | None = None,
    ) -> int:
        """Submit ``script`` (run as root in ``cwd``, default ``job_dir``) and return the job id.

        ``env`` is added to the submitting environment, which sbatch exports to the job.
        """
        cwd = Path(cwd) if cwd is not None else self.job_dir
        cmd = ["sbatch", "--parsable", *sbatch_args, str(script), *args]
        proc = subprocess.run(cmd, env=self.env(env), cwd=cwd, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise SlurmError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}\n{self._ctld_tail()}")
        return int(proc.stdout.strip().split(";")[0])

    def job_info(self, job: int) -> dict[str, str]:
        """The job's record from `scontrol show job -o` (kept MinJobAge=600 s after it ends)."""
        out = self.run("scontrol", "show", "job", "-o", str(job)).stdout
        return parse_record(out.splitlines()[0])

    def state(self, job: int) -> str:
        """Base job state, e.g. RUNNING or COMPLETED (flags like '+' dropped)."""
        return self.job_info(job)["JobState"].split("+")[0]

    def wait(self, job: int, states: set[str] | frozenset[str] = frozenset({"COMPLETED"}),
             timeout: float = 60.0, poll: float = 0.25) -> str:
        """Poll until the job reaches one of ``states``; return it.

        Raises SlurmError, with the job's stdout/stderr and the daemons' log tails, on timeout
        or when the job ends in a terminal state that was not asked for.
        """
        deadline = time.monotonic() + timeout
        while True:
            info = self.job_info(job)
            state = info["JobState"].split("+")[0]
            if state in states:
                return state
            if state in TERMINAL_STATES:
                raise SlurmError(self._job_report(job, info, f"ended {state}, expected {sorted(states)}"))
            if time.monotonic() > deadline:
                what = f"still {state} after {timeout:.0f}s, expected {sorted(states)}"
                raise SlurmError(self._job_report(job, info, what))
            time.sleep(poll)

    def wait_ended(self, job: int, timeout: float = 60.0) -> None:
        """Wait until none of the job's processes is left (its state is no longer COMPLETING either)."""
        deadline = time.monotonic() + timeout
        while self.run("squeue", "-h", "-j", str(job), "-t", ACTIVE_STATES, check=False).stdout.strip():
            if time.monotonic() > deadline:
                raise SlurmError(self._job_report(job, self.job_info(job), f"still active after {timeout:.0f}s"))
            time.sleep(0.25)

    def signal_batch(self, job: int, sig: str = "USR1") -> None:
        """Signal the batch shell only (its trap); without --batch the signal goes to job steps."""
        self.run("scancel", f"--signal={sig}", "--batch", str(job))

    def requeue_now(self, job: int, timeout: float = 30.0) -> None:
        """Let a requeued job start again at once instead of after SLURM's requeue delay (cred_expire, 120 s).

        Waits for PENDING first (the update is refused while the job runs or completes), then 1 s
        more: slurmd revokes the killed run's credential with a timestamp in seconds, and a relaunch
        within that same second fails the job ("Job credential revoked"). A future StartTime instead
        of the wait would not do: nothing schedules the job when it falls due until backfill (30 s).
        """
        self.wait(job, states={"PENDING"}, timeout=timeout)
        time.sleep(1.0)
        self.run("scontrol", "update", f"JobId={job}", "StartTime=now")

    def daemon_pid_files(self) -> list[tuple[str, Path]]:
        """(name, pid file) of each daemon, in stop order: slurmds before the controller they report to."""
        return ([(f"slurmd {n}", self.run_dir / f"slurmd-{n}.pid") for n in self.nodes]
                + [("slurmctld", self.run_dir / "slurmctld.pid"), ("munged", self.run_dir / "munged.pid")])

    def processes(self) -> list[tuple[int, str]]:
        """Live processes whose command line names the workdir or whose environment has our SLURM_CONF."""
        marker_cmd = str(self.workdir).encode()
        marker_env = b"SLURM_CONF=" + str(self.conf).encode() + b"\0"
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker_cmd in cmdline or marker_env in environ:
                found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace").strip()))
        return found

    # -- internals ---------------------------------------------------------------------------

    def _start_munge(self) -> None:
        munge_dir = self.munge_socket.parent
        munge_dir.mkdir(parents=True)
        munge_dir.chmod(0o755)  # munged refuses a socket dir that is not 755
        # --force: pytest's tmp dirs are 0700 and munged wants every ancestor of its socket
        # searchable by all; clients here are root, so its warning is harmless.
        key = munge_dir / "munge.key"
        subprocess.run([_binary("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        self.run_dir.mkdir(parents=True)
        self.log_dir.mkdir(parents=True)
        self._daemon(
            [_binary("munged"), "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
             f"--pid-file={self.run_dir / 'munged.pid'}", f"--log-file={self.log_dir / 'munged.log'}",
             f"--seed-file={munge_dir / 'munged.seed'}"],
            "munged",
        )

    def _write_conf(self) -> None:
        taken: set[int] = set()
        self.ctld_port = _free_port(taken)
        taken.add(self.ctld_port)
        for node in self.nodes:
            self.node_ports[node] = _free_port(taken)
            taken.add(self.node_ports[node])
        state = self.workdir / "state"
        state.mkdir()
        self.job_dir.mkdir()
        for node in self.nodes:
            (self.workdir / "spool" / node).mkdir(parents=True)
        node_lines = "\n".join(
            f"NodeName={n} NodeHostname={self.host} NodeAddr={self.node_addr} Port={p} "
            f"CPUs={self.cpus_per_node} RealMemory=1000 State=UNKNOWN"
            for n, p in self.node_ports.items()
        )
        self.conf.write_text(f"""\
ClusterName={self.name}
SlurmctldHost={self.host}({self.node_addr})
SlurmctldPort={self.ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
MailProg=/bin/true
JobRequeue=1
ReturnToService=2
MinJobAge=600
KillWait={self.kill_wait}
{"" if self.grace_time is not None else "SchedulerParameters=batch_sched_delay=0"}
StateSaveLocation={state}
SlurmdSpoolDir={self.workdir}/spool/%n
SlurmctldPidFile={self.run_dir}/slurmctld.pid
SlurmdPidFile={self.run_dir}/slurmd-%n.pid
SlurmctldLogFile={self.log_dir}/slurmctld.log
SlurmdLogFile={self.log_dir}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
{node_lines}
{self._partition_lines()}
""")

    def _partition_lines(self) -> str:
        if self.grace_time is None:
            return "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
        # bf_interval=1: a preemption whose grace time ran out is carried out at the next scheduling pass,
        # which is the backfill scheduler's (every 30 s by default).
        return f"""\
SchedulerParameters=batch_sched_delay=0,bf_interval=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
PartitionName=low Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime={self.grace_time}
PartitionName=high Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF"""

    def _daemon(self, argv: list[str], what: str) -> None:
        """Run a self-daemonising program; its foreground part exits once it is set up."""
        proc = subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise SlurmError(f"{what} failed to start ({proc.returncode}): {proc.stderr}\n{self._logs_tail()}")

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            proc = self.run("scontrol", "show", "node", "-o", check=False)
            if proc.returncode == 0:
                records = [parse_record(line) for line in proc.stdout.splitlines() if line.strip()]
                states = {r["NodeName"]: r["State"] for r in records}
                if len(states) == len(self.nodes) and all(s == "IDLE" for s in states.values()):
                    return
            time.sleep(0.2)
        raise SlurmError(f"nodes not idle after {timeout:.0f}s: {states}\n{self._logs_tail()}")

    def _shutdown(self) -> list[str]:
        """Stop everything this cluster started; return 'pid cmdline' of processes that had to be killed."""
        if not self.started:
            return []
        self.started = False
        if (self.run_dir / "slurmctld.pid").exists():
            self._cancel_all()
        for _, pid_file in self.daemon_pid_files():
            pid = self._own_pid(pid_file)
            if pid is not None:
                _terminate(pid)
        leftovers = []
        for pid, cmdline in self.processes():
            leftovers.append(f"{pid} {cmdline}")
            _terminate(pid, grace=0)
        return leftovers

    def _cancel_all(self, timeout: float = 15.0) -> None:
        """Cancel active jobs and wait for them to finish so their steps do not outlive slurmd."""
        proc = self.run("squeue", "-h", "-o", "%i", "-t", ACTIVE_STATES, check=False)
        jobs = proc.stdout.split() if proc.returncode == 0 else []
        if not jobs:
            return
        self.run("scancel", *jobs, check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.run("squeue", "-h", "-o", "%i", "-t", ACTIVE_STATES, check=False)
            if proc.returncode != 0 or not proc.stdout.split():
                return
            time.sleep(0.2)

    def _own_pid(self, pid_file: Path) -> int | None:
        """The pid in ``pid_file`` if that process is alive and really belongs to this cluster."""
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid in dict(self.processes()) else None

    def _ctld_tail(self) -> str:
        return f"--- slurmctld.log ---\n{_tail(self.log_dir / 'slurmctld.log')}"

    def _logs_tail(self) -> str:
        parts = [f"--- munged.log ---\n{_tail(self.log_dir / 'munged.log', 15)}", self._ctld_tail()]
        parts += [f"--- slurmd-{n}.log ---\n{_tail(self.log_dir / f'slurmd-{n}.log', 20)}" for n in self.nodes]
        return "\n".join(parts)

    def _job_report(self, job: int, info: Mapping[str, str], what: str) -> str:
        out, err = info.get("StdOut", ""), info.get("StdErr", "")
        parts = [f"job {job} {what}; Reason={info.get('Reason')} ExitCode={info.get('ExitCode')}",
                 f"--- stdout {out} ---\n{_tail(Path(out)) if out else '<none>'}"]
        if err and err != out:
            parts.append(f"--- stderr {err} ---\n{_tail(Path(err))}")
        parts.append(self._logs_tail())
        return "\n".join(parts)


def _terminate(pid: int, grace: float = 10.0) -> None:
    """SIGTERM (unless ``grace`` is 0), SIGKILL after ``grace`` seconds; by pid only."""
    steps = [(signal.SIGTERM, grace)] if grace else []
    for sig, wait in [*steps, (signal.SIGKILL, 5.0)]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not is_alive(pid):
                return
            time.sleep(0.05)


def is_alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (a zombie daemon is already stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cluster(tmp_path_factory: pytest.TempPathFactory, nodes: int, grace_time: int | None = None,
             kill_wait: int = 5) -> Iterator[SlurmCluster]:
    if reason := unavailable():
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), nodes=nodes, grace_time=grace_time,
                           kill_wait=kill_wait).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running one-node cluster (node n1, 2 CPUs); stopped and checked for leftovers after the test."""
    yield from _cluster(tmp_path_factory, nodes=1)


@pytest.fixture
def slurm_cluster_preemption(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """One node (n1, 2 CPUs) in two partitions, `low` (the default) and `high`, which preempts `low` with
    PreemptMode=REQUEUE and a GraceTime of PREEMPTION_GRACE_TIME seconds; KillWait=PREEMPTION_KILL_WAIT."""
    yield from _cluster(tmp_path_factory, nodes=1, grace_time=PREEMPTION_GRACE_TIME, kill_wait=PREEMPTION_KILL_WAIT)


@pytest.fixture
def slurm_cluster_2nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running cluster of two emulated nodes n1, n2 (2 CPUs each) on this host."""
    yield from _cluster(tmp_path_factory, nodes=2)

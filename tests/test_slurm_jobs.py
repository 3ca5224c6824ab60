"""launch/ and slurm/, for real: the accelerate configs, distgan-submit, and the project's own sbatch
scripts on a local SLURM cluster (tests/slurm_cluster.py) in CPU mode: one node with 2 gloo
processes, two emulated nodes rendezvousing over loopback, and USR1 -> checkpoint -> requeue -> resume."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from conftest import REPO, run_env
from slurm_cluster import (  # noqa: F401 (fixtures are used by name)
    PREEMPTION_GRACE_TIME,
    PREEMPTION_KILL_WAIT,
    SlurmCluster,
    slurm_cluster,
    slurm_cluster_2nodes,
    slurm_cluster_preemption,
    wait_for_path,
)

TINY = ["data.batch_size=8", "model.ngf=8", "model.ndf=8", "data.num_workers=0", "data.shuffle_buffer=64",
        "log.sample_grid=16", "log.log_with=none"]


# -- launch/*.yaml -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, distributed, processes, machines, precision", [
    ("single_gpu", DistributedType.NO, 1, 1, "bf16"),
    ("multi_gpu", DistributedType.MULTI_GPU, 8, 1, "bf16"),
    ("multi_node", DistributedType.MULTI_GPU, 16, 2, "bf16"),
    ("cpu", DistributedType.MULTI_GPU, 2, 1, "no"),
])
def test_launch_configs_load_with_accelerates_own_loader(name, distributed, processes, machines, precision):
    config = load_config_from_file(str(REPO / "launch" / f"{name}.yaml"))
    assert (config.distributed_type, config.num_processes, config.num_machines, config.mixed_precision) == (
        distributed, processes, machines, precision)
    assert config.use_cpu == (name == "cpu") and config.rdzv_backend == "static"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cpu_launch_config_starts_two_gloo_ranks(tmp_path):
    probe = tmp_path / "probe.py"
    # One file per rank: two ranks printing to one pipe can interleave their words (PYTHONUNBUFFERED).
    probe.write_text("import sys, torch.distributed as dist\nfrom accelerate import Accelerator\na = Accelerator()\n"
                     "open(f'{sys.argv[1]}/rank-{a.process_index}', 'w').write(f'{a.num_processes} {dist.get_backend()}')\n")
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(REPO / "launch/cpu.yaml"), str(probe), str(tmp_path)],
                          env=run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name: p.read_text() for p in tmp_path.glob("rank-*")} == {"rank-0": "2 gloo", "rank-1": "2 gloo"}


# -- distgan-submit --dry-run --------------------------------------------------------------------


def submit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "distgan.submit", *args]


def test_submit_dry_run_prints_the_sbatch_line(tmp_path):
    out = subprocess.run(submit_cmd("--config", "configs/fashion_house.yaml", "--name", "big", "--nodes", "4",
                                    "--gpus-per-node", "8", "--time", "2:00:00", "--partition", "gpu",
                                    "--account", "lab", "--sbatch-arg=--exclusive", "--run-dir", str(tmp_path),
                                    "--dry-run", "train.steps=100", "data.batch_size=64"),
                         env=run_env(), cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    env, sbatch = out.split(" sbatch ", 1)
    assert f"DISTGAN_HOME={REPO}" in env and f"DISTGAN_CONFIG={REPO}/configs/fashion_house.yaml" in env
    assert f"DISTGAN_NAME=big DISTGAN_RUN_DIR={tmp_path}" in env and "DISTGAN_CPU" not in env
    assert sbatch == (f"--job-name=big --nodes=4 --output={REPO}/logs/%x-%j.out --gpus-per-node=8 --time=2:00:00 "
                      f"--partition=gpu --account=lab --exclusive {REPO}/slurm/multi_node.sbatch "
                      "train.steps=100 data.batch_size=64")
    single = subprocess.run(submit_cmd("--config", "configs/fashion_house.yaml", "--name", "c", "--cpu", "--dry-run"),
                            env=run_env(), cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "DISTGAN_CPU=1" in single and "--gpus-per-node=0" in single and single.rstrip().endswith(
        "slurm/single_node.sbatch")
    bad = subprocess.run(submit_cmd("--config", "configs/fashion_house.yaml", "--name", "c", "name=other"),
                         env=run_env(), cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "--name" in bad.stderr


def test_job_script_trains_in_the_run_dir_it_stops(tmp_path):
    """The trainer's run_dir/name must be the $RUN whose STOP file the shell touches on USR1: also when
    runs/NAME is a symlink to elsewhere and when the name holds a slash."""
    (tmp_path / "runs" / "group").mkdir(parents=True)
    (tmp_path / "scratch" / "exp42").mkdir(parents=True)
    (tmp_path / "runs" / "linked").symlink_to(tmp_path / "scratch" / "exp42")
    for name in ("linked", "group/exp1"):
        script = (f"source {REPO}/slurm/common.sh\ndistgan_setup > /dev/null\n"
                  'echo "$RUN"; printf "%s\\n" "${TRAIN[@]}"')
        env = run_env(DISTGAN_HOME=str(REPO), SLURM_JOB_NAME=name, DISTGAN_RUN_DIR=str(tmp_path / "runs"),
                      DISTGAN_CPU="1", SLURM_CPUS_PER_TASK="2")
        lines = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                               check=True).stdout.splitlines()
        settings = dict(line.split("=", 1) for line in lines[1:] if line.startswith(("run_dir=", "name=")))
        assert Path(lines[0]) == Path(settings["run_dir"]) / settings["name"] == tmp_path / "runs" / name


def test_training_that_ends_while_the_usr1_trap_runs_is_not_a_failure(tmp_path):
    """USR1 can come as the run ends (its last step, or a STOP seen at once): `wait` then returns the
    trap's 138, and the job must still take the trainer's own exit status (a slow `touch` on a shared
    filesystem is emulated by a slow log)."""
    (tmp_path / "COMPLETED").write_text("100")
    script = (f"source {REPO}/slurm/common.sh\nRUN={tmp_path}\nlog() {{ sleep 1; }}\n"
              "( sleep 0.2; kill -USR1 $$ ) &\ndistgan_run bash -c 'sleep 0.5; exit 0'\n")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# -- bash 4.2 (CentOS 7, still on clusters) ---------------------------------------------------------

# Expansions and builtins newer than bash 4.2. Bash 4.2 does not reject ${a[*]@Q}: it drops the @Q
# without a word, so a quoting bug would pass every run that has no space or quote in its arguments.
NEWER_THAN_BASH_42 = {
    r"\$\{[^}]*@[QEPAaKkUuL]\}": "${var@X} transformations (bash 4.4)",
    r"\b(local|declare|typeset)\s+-\w*n": "namerefs (bash 4.3)",
    r"\bwait\s+-\w*[nf]": "wait -n / -f (bash 4.3 / 5.0)",
    r"\b(mapfile|readarray)\b[^\n]*\s-d\b": "mapfile -d (bash 4.4)",
    r"\[\s*-\d+\s*\]\}": "negative array subscripts (bash 4.3)",
}
OLD_BASH = Path(os.environ.get("DISTGAN_TEST_OLD_BASH", "/opt/bash-4.2/bin/bash"))


def old_bash_version() -> str | None:
    """The version of the bash 4.2 that the real test runs the job scripts with, if this machine has one."""
    if not os.access(OLD_BASH, os.X_OK):
        return None
    out = subprocess.run([str(OLD_BASH), "-c", "echo $BASH_VERSION"], capture_output=True, text=True).stdout
    return out.strip() if out.startswith("4.2.") else None


@pytest.mark.parametrize("script", ["common.sh", "single_node.sbatch", "multi_node.sbatch"])
def test_job_scripts_use_nothing_newer_than_bash_42(script):
    text = (REPO / "slurm" / script).read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    found = [f"{what}: {m.group(0)!r}" for pattern, what in NEWER_THAN_BASH_42.items()
             for m in re.finditer(pattern, code)]
    assert not found, f"slurm/{script} needs a bash newer than 4.2: {found}"


ARGV_PROBE = """#!{bash}
# Stands in for the interpreter: records the argument vector it was given, NUL-separated.
printf '%s\\0' "$@" > "{out}.$SLURM_NODEID"
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(old_bash_version() is None,
                    reason=f"no bash 4.2 at {OLD_BASH} (DISTGAN_TEST_OLD_BASH): build GNU bash-4.2 with "
                           "./configure --prefix=/opt/bash-4.2 --without-bash-malloc && make install")
def test_job_scripts_pass_every_argument_intact_under_bash_42(slurm_cluster, tmp_path):
    """Both job scripts run by bash 4.2 (their own shell and the one srun starts on each node) hand the
    launcher exactly the arguments bash 5 would: with spaces, quotes and an empty value among them."""
    shells = tmp_path / "old-bash"
    shells.mkdir()
    (shells / "bash").symlink_to(OLD_BASH)
    odd = ["log.project=my project's \"runs\"", "log.wandb_entity=", "data.path=/data/a b"]
    run_dir = tmp_path / "runs with space"
    for name in ("single_node", "multi_node"):
        out = tmp_path / f"{name}.argv"
        probe = tmp_path / f"{name}-python"
        probe.write_text(ARGV_PROBE.format(bash=OLD_BASH, out=out))
        probe.chmod(0o755)
        script = tmp_path / f"{name}.sbatch"  # slurmd runs the script with its #! line: bash 4.2
        script.write_text((REPO / "slurm" / f"{name}.sbatch").read_text().replace("#!/bin/bash", f"#!{OLD_BASH}", 1))
        env = {"DISTGAN_HOME": str(REPO), "DISTGAN_PYTHON": str(probe), "DISTGAN_CPU": "1",
               "DISTGAN_RUN_DIR": str(run_dir), "DISTGAN_CONFIG": "configs/fashion_house.yaml",
               "PATH": f"{shells}:{os.environ['PATH']}"}
        job = slurm_cluster.sbatch(script, args=odd, env=env, cwd=tmp_path,
                                   sbatch_args=["--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2",
                                                f"--output={tmp_path}/{name}-%j.out", f"--job-name={name}"])
        assert slurm_cluster.wait(job, timeout=60) == "COMPLETED"
        log = (tmp_path / f"{name}-{job}.out").read_text()
        argv = Path(f"{out}.0").read_text().split("\0")[:-1]
        train = argv[argv.index("distgan/train.py"):]
        assert train == ["distgan/train.py", "--config", "configs/fashion_house.yaml", *odd,
                         f"run_dir={run_dir}", f"name={name}"], log
        assert argv[:2] == ["-m", "accelerate.commands.launch"]
        if name == "multi_node":
            assert argv[argv.index("--machine_rank") + 1] == "0"


# -- the sbatch scripts on a real cluster --------------------------------------------------------


def submit(cluster: SlurmCluster, tmp_path: Path, data: Path, name: str, *overrides: str, nodes: int = 1,
           procs: int = 2, env: dict[str, str] | None = None, wandb: bool = False) -> tuple[int, Path]:
    """distgan-submit in CPU mode against ``cluster``; returns (job id, its log file)."""
    cmd = submit_cmd("--config", "configs/fashion_house.yaml", "--name", name, "--run-dir", str(tmp_path / "runs"),
                     "--log-dir", str(tmp_path / "logs"), "--nodes", str(nodes), "--cpu", "--procs-per-node",
                     str(procs), "--cpus-per-task", "2", "--time", "10:00", f"data.path={data}", *TINY, *overrides)
    if wandb:  # offline: both starts of a requeued job must log to one W&B run
        cmd.append("log.log_with=wandb")
        env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    if nodes > 1:
        cmd += ["--main-addr", cluster.node_addr]  # the emulated node names n1, n2 do not resolve
    job_env = {"DISTGAN_HOME": str(REPO), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, env=cluster.env(job_env), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job = int(re.search(r"Submitted batch job (\d+)", proc.stdout).group(1))
    return job, tmp_path / "logs" / f"{name}-{job}.out"


def metric_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0



@pytest.mark.slow
@pytest.mark.timeout(180)
def test_single_node_script_trains_with_two_processes(slurm_cluster, shards, tmp_path):
    data, _ = shards
    run = tmp_path / "runs" / "single"
    run.mkdir(parents=True)
    (run / "STOP").touch()  # left by an earlier preempted job: must not stop this one
    job, log = submit(slurm_cluster, tmp_path, data, "single", "train.steps=8", "train.log_every=2",
                      "train.sample_every=4", "train.checkpoint_every=4")
    assert slurm_cluster.wait(job, timeout=150) == "COMPLETED"
    text = log.read_text()
    assert "start 1 on n1: 1 node(s) x 2 process(es)" in text and "2 rank(s) on cpu" in text
    assert "run completed at step 8" in text
    assert (run / "COMPLETED").read_text().strip() == "8" and not (run / "STOP").exists()
    assert metric_steps(run) == [2, 4, 6, 8]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000004", "step-0000008"]
    last = run / "checkpoints" / "step-0000008"
    assert json.loads((last / "state.json").read_text())["world_size"] == 2
    assert (last / "random_states_0.pkl").exists() and (last / "random_states_1.pkl").exists()
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-0000004.png", "step-0000008.png"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_multi_node_script_rendezvouses_two_nodes_over_loopback(slurm_cluster_2nodes, shards, tmp_path):
    data, _ = shards
    env = {}
    # A fresh cluster's first job is 1, so the script's default port is 20001; on the rare host where
    # that is taken (another test's daemon), the override keeps the test from failing for nothing.
    if not port_free(20001):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            env["DISTGAN_MAIN_PORT"] = str(s.getsockname()[1])
    job, log = submit(slurm_cluster_2nodes, tmp_path, data, "multi", "train.steps=6", "train.log_every=2",
                      "train.sample_every=6", "train.checkpoint_every=6", nodes=2, procs=1, env=env)
    assert slurm_cluster_2nodes.wait(job, timeout=150) == "COMPLETED"
    text = log.read_text()
    assert slurm_cluster_2nodes.job_info(job)["NodeList"] == "n[1-2]"
    assert f"rendezvous at 127.0.0.1:{env.get('DISTGAN_MAIN_PORT', 20001)}" in text
    # Each node expanded its own SLURM_NODEID (srun --label prefixes the task number).
    assert "0: n1: machine rank 0" in text and "1: n2: machine rank 1" in text, text
    assert "2 rank(s) on cpu" in text and "run completed at step 6" in text
    run = tmp_path / "runs" / "multi"
    assert metric_steps(run) == [2, 4, 6]
    last = run / "checkpoints" / "step-0000006"
    assert json.loads((last / "state.json").read_text())["world_size"] == 2
    assert (last / "random_states_0.pkl").exists() and (last / "random_states_1.pkl").exists()


def assert_resumed_once_to_the_exact_step(run: Path, log: str, job: int, steps: int) -> int:
    """Two starts of one job in one log, the second resumed from the first's stop: exactly `steps` steps,
    one unbroken step counter and one W&B run. Returns the step the first start stopped at."""
    assert log.count(f"job {job} start 1 on n1") == 1 and log.count(f"job {job} start 2 on n1") == 1
    stopped = int(re.search(r"stopped at step (\d+)", log).group(1))
    assert 5 <= stopped < steps
    # Resumed exactly where it stopped: nothing lost beyond the step boundary.
    assert f"resumed from {run}/checkpoints/step-{stopped:07d}" in log
    assert (run / "COMPLETED").read_text().strip() == str(steps)
    assert metric_steps(run) == list(range(5, steps + 1, 5))  # one unbroken counter
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"step-{stopped:07d}", f"step-{steps:07d}"]
    run_id = (run / "wandb_id.txt").read_text().strip()
    assert len(list((run / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # both starts in the same W&B run
    return stopped


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_usr1_checkpoints_requeues_and_resumes_to_the_exact_step(slurm_cluster, shards, tmp_path):
    data, _ = shards
    steps = 200  # ~7 s of training here: the signal, sent right after the first log line, lands mid-run
    job, log = submit(slurm_cluster, tmp_path, data, "pre", f"train.steps={steps}", "train.log_every=5",
                      "train.sample_every=100", "train.checkpoint_every=1000", wandb=True)
    run = tmp_path / "runs" / "pre"
    wait_for_path(run / "metrics.jsonl", timeout=120)
    slurm_cluster.signal_batch(job, "USR1")  # what --signal=B:USR1@120 does before the time limit
    slurm_cluster.requeue_now(job, timeout=60)
    assert slurm_cluster.wait(job, timeout=150) == "COMPLETED"
    assert slurm_cluster.job_info(job)["Restarts"] == "1"
    text = log.read_text()  # --open-mode=append: both starts in one log
    assert text.count("USR1: checkpoint at the next step boundary") == 1
    assert text.count(f"every rank stopped with a checkpoint; requeueing job {job}") == 1
    assert_resumed_once_to_the_exact_step(run, text, job, steps)


HIGH_PRIORITY_JOB = """#!/bin/bash
echo "$SLURM_JOB_ID ran in $SLURM_JOB_PARTITION" > {out}
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_preemption_by_a_higher_priority_job_checkpoints_requeues_and_resumes(slurm_cluster_preemption, shards,
                                                                               tmp_path):
    """The real thing: a job of the `high` partition needs the node's CPUs, so SLURM preempts the training job
    of `low` (PreemptMode=REQUEUE, GraceTime 30 s): SIGTERM from SLURM to the job step, every rank checkpoints
    at the next step boundary well within the grace time, the job is requeued, the high job runs, and the
    training job resumes when the node is free and finishes with exactly the requested steps."""
    cluster, data = slurm_cluster_preemption, shards[0]
    steps = 300
    job, log = submit(cluster, tmp_path, data, "low", f"train.steps={steps}", "train.log_every=5",
                      "train.sample_every=1000", "train.checkpoint_every=1000", wandb=True)
    run = tmp_path / "runs" / "low"
    wait_for_path(run / "metrics.jsonl", timeout=120)
    high_script = tmp_path / "high.sh"
    high_script.write_text(HIGH_PRIORITY_JOB.format(out=tmp_path / "high.txt"))
    high = cluster.sbatch(high_script, sbatch_args=["--partition=high", "--cpus-per-task=2",
                                                    f"--output={tmp_path}/high-%j.out"])
    cluster.requeue_now(job, timeout=PREEMPTION_GRACE_TIME + 60)
    assert cluster.wait(high, timeout=60) == "COMPLETED"
    assert (tmp_path / "high.txt").read_text() == f"{high} ran in high\n"
    assert cluster.wait(job, timeout=150) == "COMPLETED"
    info = cluster.job_info(job)
    assert info["Restarts"] == "1" and cluster.job_info(high)["EndTime"] <= info["StartTime"]  # ISO times
    text = log.read_text()
    # SLURM's SIGTERM reached the ranks (the test sent none), and they were done before the grace time ran
    # out: the script requeued the job itself; SLURM never had to kill it.
    assert "received SIGTERM: checkpoint at the next step boundary" in text
    assert text.count("preempted: ") == 1 and text.count(f"requeueing job {job}") == 1, text
    assert "DUE TO PREEMPTION" not in text and "USR1" not in text
    assert_resumed_once_to_the_exact_step(run, text, job, steps)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_scancel_leaves_a_complete_checkpoint_and_no_requeue(slurm_cluster_preemption, shards, tmp_path):
    """scancel: SIGTERM to every process of the job (batch shell, srun, launcher, ranks, loader workers),
    SIGKILL KillWait (20 s here) later. The job is not requeued, also where preemption is configured."""
    cluster, data = slurm_cluster_preemption, shards[0]
    job, log = submit(cluster, tmp_path, data, "cancelled", "train.steps=5000", "train.log_every=5",
                      "train.sample_every=1000", "train.checkpoint_every=10000")
    run = tmp_path / "runs" / "cancelled"
    wait_for_path(run / "metrics.jsonl", timeout=120)
    cluster.run("scancel", str(job))
    cluster.wait_ended(job, timeout=PREEMPTION_KILL_WAIT + 30)
    assert cluster.state(job) == "CANCELLED" and cluster.job_info(job)["Restarts"] == "0"
    text = log.read_text()
    stopped = int(re.search(r"stopped at step (\d+)", text).group(1))
    last = run / "checkpoints" / f"step-{stopped:07d}"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [last.name]
    assert json.loads((last / "state.json").read_text())["step"] == stopped
    assert (last / "random_states_0.pkl").exists() and (last / "random_states_1.pkl").exists()
    assert (run / "STOPPED").exists() and not (run / "COMPLETED").exists()
    assert "every rank stopped with a checkpoint" in text and "not requeued" in text and "requeueing" not in text


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_failed_training_fails_the_job_without_requeue(slurm_cluster, shards, tmp_path):
    data, _ = shards
    job, log = submit(slurm_cluster, tmp_path, data, "bad", "train.stepz=3")
    assert slurm_cluster.wait(job, states={"FAILED"}, timeout=100) == "FAILED"
    info = slurm_cluster.job_info(job)
    assert info["Restarts"] == "0" and info["ExitCode"] != "0:0"
    text = log.read_text()
    assert "unknown config key 'train.stepz'" in text and "not requeued" in text


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_lapgan_array_job_trains_each_level_into_one_run(slurm_cluster, shards, tmp_path):
    """slurm/lapgan_levels.sbatch as a 3-task array: task K trains level K, all into runs/lap; the export
    then chains the three levels."""
    data, _ = shards
    env = {"DISTGAN_HOME": str(REPO), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DISTGAN_CPU": "1",
           "DISTGAN_PROCS_PER_NODE": "1", "DISTGAN_NAME": "lap", "DISTGAN_RUN_DIR": str(tmp_path / "runs"),
           "DISTGAN_PYTHON": sys.executable}
    (tmp_path / "logs").mkdir()
    job = slurm_cluster.sbatch(REPO / "slurm" / "lapgan_levels.sbatch", cwd=tmp_path, env=env,
                               args=[f"data.path={data}", "train.steps=2", "train.log_every=1", "model.nz=16", *TINY],
                               sbatch_args=["--array=0-2", "--gpus-per-node=0", "--cpus-per-task=1",
                                            "--time=10:00"])
    for task in range(3):
        assert slurm_cluster.wait(f"{job}_{task}", timeout=200) == "COMPLETED"
    run = tmp_path / "runs" / "lap" / "levels"
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["level-0", "level-1", "level-2"]
    for level in range(3):
        assert (run / f"level-{level}" / "step-0000002" / "state.json").is_file()
        assert f"level {level} step 2: d_loss" in (tmp_path / "logs" / f"lapgan-{job}_{level}.out").read_text()
    from distgan.pyramid_run import assemble_generator
    generator, info = assemble_generator(tmp_path / "runs" / "lap")
    assert info["step"] == 2 and generator.spec.levels == 3


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_lapgan_array_task_stopped_by_usr1_is_requeued_alone(slurm_cluster, shards, tmp_path):
    """One task of the level array gets USR1 (what --signal=B:USR1@120 sends before its time limit): its level
    checkpoints and the task is requeued, to resume its level to the end; its sibling, training another level
    into the same run directory, never stops."""
    data, _ = shards
    env = {"DISTGAN_HOME": str(REPO), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DISTGAN_CPU": "1",
           "DISTGAN_PROCS_PER_NODE": "1", "DISTGAN_NAME": "lap", "DISTGAN_RUN_DIR": str(tmp_path / "runs"),
           "DISTGAN_PYTHON": sys.executable}
    (tmp_path / "logs").mkdir()
    steps = 400
    job = slurm_cluster.sbatch(REPO / "slurm" / "lapgan_levels.sbatch", cwd=tmp_path, env=env,
                               args=[f"data.path={data}", f"train.steps={steps}", "train.log_every=1",
                                     "train.sync_every=1", "train.checkpoint_every=100000", "model.nz=16", *TINY],
                               sbatch_args=["--array=1-2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10:00"])
    levels = tmp_path / "runs" / "lap" / "levels"
    for level in (1, 2):
        wait_for_path(levels / f"level-{level}" / "metrics.jsonl", timeout=120)
    slurm_cluster.signal_batch(f"{job}_1", "USR1")
    slurm_cluster.requeue_now(f"{job}_1", timeout=90)
    for task in (1, 2):
        assert slurm_cluster.wait(f"{job}_{task}", timeout=200) == "COMPLETED"
    assert slurm_cluster.job_info(f"{job}_1")["Restarts"] == "1"
    assert slurm_cluster.job_info(f"{job}_2")["Restarts"] == "0"
    stopped = (tmp_path / "logs" / f"lapgan-{job}_1.out").read_text()
    assert "every rank stopped with a checkpoint; requeueing job" in stopped and "run completed at step" in stopped
    sibling = (tmp_path / "logs" / f"lapgan-{job}_2.out").read_text()
    assert "USR1" not in sibling and "stopped:" not in sibling and f"run completed at step {steps}" in sibling
    for level in (1, 2):
        assert (levels / f"level-{level}" / "COMPLETED").read_text() == f"{steps}\n"
        assert (levels / f"level-{level}" / f"step-{steps:07d}" / "state.json").is_file()
    assert not (tmp_path / "runs" / "lap" / "STOPPED").exists()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_lapgan_array_task_leaves_the_run_wide_stop_for_its_siblings(slurm_cluster, shards, tmp_path):
    """runs/NAME/STOP stops every launch of the run. A task that (re)starts while it is there honours it (its
    level stops, STOPPED, not requeued) and leaves it for its siblings; before, distgan_setup removed it and
    the task trained on."""
    data, _ = shards
    env = {"DISTGAN_HOME": str(REPO), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DISTGAN_CPU": "1",
           "DISTGAN_PROCS_PER_NODE": "1", "DISTGAN_NAME": "lap", "DISTGAN_RUN_DIR": str(tmp_path / "runs"),
           "DISTGAN_PYTHON": sys.executable}
    (tmp_path / "logs").mkdir()
    stop = tmp_path / "runs" / "lap" / "STOP"
    stop.parent.mkdir(parents=True)
    stop.touch()
    job = slurm_cluster.sbatch(REPO / "slurm" / "lapgan_levels.sbatch", cwd=tmp_path, env=env,
                               args=[f"data.path={data}", "train.steps=50", "model.nz=16", *TINY],
                               sbatch_args=["--array=1-1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10:00"])
    assert slurm_cluster.wait(f"{job}_1", timeout=200) == "COMPLETED"
    level = tmp_path / "runs" / "lap" / "levels" / "level-1"
    assert stop.exists() and (level / "STOPPED").read_text() == "0\n" and not (level / "COMPLETED").exists()
    assert "not requeued" in (tmp_path / "logs" / f"lapgan-{job}_1.out").read_text()

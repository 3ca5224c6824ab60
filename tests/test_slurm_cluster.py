"""The SLURM test cluster itself: jobs run, two emulated nodes see each other, USR1 + requeue
works as the training scripts will use it, and teardown leaves no process behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_cluster import (  # noqa: F401 (fixtures are used by name)
    SlurmCluster,
    SlurmError,
    is_alive,
    slurm_cluster,
    slurm_cluster_2nodes,
    unavailable,
    wait_for_path,
)

pytestmark = pytest.mark.slow


def _script(path: Path, body: str, directives: tuple[str, ...] = ()) -> Path:
    """A bash job script; #SBATCH lines must precede the first command or sbatch ignores them."""
    path.write_text("#!/bin/bash\n" + "".join(f"#SBATCH {d}\n" for d in directives) + "set -euo pipefail\n" + body)
    return path


def test_single_node_job_completes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    job = slurm_cluster.sbatch(_script(tmp_path / "job.sh", f'echo "hello $1 from $SLURM_JOB_ID" > {out}\n'),
                               args=["world"])
    assert slurm_cluster.wait(job, timeout=30) == "COMPLETED"
    assert out.read_text() == f"hello world from {job}\n"
    info = slurm_cluster.job_info(job)
    assert info["ExitCode"] == "0:0" and info["NodeList"] == "n1"


def test_two_node_job_sees_both_nodes(slurm_cluster_2nodes: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "tasks.txt"
    script = _script(
        tmp_path / "job.sh",
        f"""srun bash -c 'echo "$SLURM_NODEID $SLURM_NNODES $SLURMD_NODENAME $SLURM_JOB_NODELIST"' > {out}\n""",
        directives=("--nodes=2", "--ntasks-per-node=1"),
    )
    job = slurm_cluster_2nodes.sbatch(script)
    assert slurm_cluster_2nodes.wait(job, timeout=30) == "COMPLETED"
    assert sorted(out.read_text().splitlines()) == ["0 2 n1 n[1-2]", "1 2 n2 n[1-2]"]


def test_usr1_requeue_runs_again(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    # The trap kills its own sleep: a child left running would outlive the job (and fail teardown).
    script = _script(tmp_path / "job.sh", f"""\
cd {tmp_path}
echo "run ${{SLURM_RESTART_COUNT:-0}}" >> runs.txt
if [ "${{SLURM_RESTART_COUNT:-0}}" -ge 1 ]; then exit 0; fi
trap 'kill $sleeper; echo usr1 > flag; scontrol requeue $SLURM_JOB_ID; exit 0' USR1
sleep 300 & sleeper=$!
touch ready
wait
""")
    job = slurm_cluster.sbatch(script)
    wait_for_path(tmp_path / "ready")
    slurm_cluster.signal_batch(job, "USR1")
    wait_for_path(tmp_path / "flag")
    slurm_cluster.requeue_now(job)
    assert slurm_cluster.wait(job, timeout=30) == "COMPLETED"
    assert (tmp_path / "runs.txt").read_text() == "run 0\nrun 1\n"
    assert slurm_cluster.job_info(job)["Restarts"] == "1"


def test_wait_reports_failed_job_with_its_log(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = slurm_cluster.sbatch(_script(tmp_path / "job.sh", "echo 'boom: bad config' >&2\nexit 3\n"))
    with pytest.raises(SlurmError, match=r"(?s)ended FAILED.*boom: bad config.*slurmctld.log"):
        slurm_cluster.wait(job, timeout=30)


@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
def test_stop_leaves_nothing_and_catches_escaped_children(tmp_path_factory: pytest.TempPathFactory) -> None:
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        daemons = {name: int(path.read_text()) for name, path in cluster.daemon_pid_files()}
        assert set(daemons) == {"slurmd n1", "slurmctld", "munged"}
        assert all(is_alive(pid) for pid in daemons.values())
        # A double-forked child escapes proctrack/linuxproc and survives its job; stop() must notice
        # it, while a job still running is cancelled cleanly.
        job = cluster.sbatch(_script(cluster.job_dir / "leak.sh", "(sleep 299 &)\n"))
        cluster.wait(job, timeout=30)
        running = cluster.sbatch(_script(cluster.job_dir / "long.sh", "sleep 300\n"))
        cluster.wait(running, states={"RUNNING"}, timeout=30)
        with pytest.raises(SlurmError, match="sleep 299") as error:
            cluster.stop()
        assert "sleep 300" not in str(error.value)
        assert cluster.processes() == []
        assert not any(is_alive(pid) for pid in daemons.values())
    finally:
        cluster.stop(check=False)

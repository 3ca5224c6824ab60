"""Submit a training run to SLURM: `distgan-submit --config configs/X.yaml --name NAME [--nodes N] [key=value ...]`.

Builds the `sbatch` line for slurm/single_node.sbatch (one node) or slurm/multi_node.sbatch (several)
and runs it; `--dry-run` prints it instead. The job scripts read their settings from DISTGAN_*
environment variables (slurm/common.sh), which sbatch exports to the job, so the printed line is a
plain shell command that can be run by hand.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path


def checkout() -> Path:
    """The distgan source tree holding slurm/ (DISTGAN_HOME, else the one this module lives in)."""
    home = Path(os.environ.get("DISTGAN_HOME") or Path(__file__).resolve().parents[1])
    if not (home / "slurm" / "common.sh").is_file():
        raise SystemExit(f"distgan-submit: no slurm/ in {home}: run from a source checkout "
                         "(pip install -e .) or set DISTGAN_HOME to one")
    return home


def build(args: argparse.Namespace, home: Path) -> tuple[dict[str, str], list[str]]:
    """(environment for sbatch, sbatch argv) for the parsed arguments."""
    for item in args.overrides:
        if "=" not in item or item.startswith(("name=", "run_dir=")):
            raise SystemExit(f"distgan-submit: {item!r}: overrides are key=value; set the run with --name/--run-dir")
    config = Path(args.config)
    if not config.is_file() and (home / config).is_file():
        config = home / config  # configs/X.yaml from outside the checkout
    if not config.is_file():
        raise SystemExit(f"distgan-submit: config {args.config} not found")
    env = {
        "DISTGAN_HOME": str(home),
        "DISTGAN_PYTHON": args.python,
        "DISTGAN_CONFIG": str(config.resolve()),
        "DISTGAN_NAME": args.name,
        "DISTGAN_RUN_DIR": str(Path(args.run_dir).resolve()),
    }
    if args.cpu:
        env["DISTGAN_CPU"] = "1"
    if args.procs_per_node:
        env["DISTGAN_PROCS_PER_NODE"] = str(args.procs_per_node)
    if args.main_addr:
        env["DISTGAN_MAIN_ADDR"] = args.main_addr
    log_dir = Path(args.log_dir).resolve()
    argv = ["sbatch", f"--job-name={args.name}", f"--nodes={args.nodes}", f"--output={log_dir}/%x-%j.out"]
    gpus = 0 if args.cpu else args.gpus_per_node
    optional = {"--gpus-per-node": gpus, "--cpus-per-task": args.cpus_per_task, "--time": args.time,
                "--partition": args.partition, "--account": args.account}
    argv += [f"{flag}={value}" for flag, value in optional.items() if value is not None]
    argv += args.sbatch_arg
    script = "single_node.sbatch" if args.nodes == 1 else "multi_node.sbatch"
    argv += [str(home / "slurm" / script), *args.overrides]
    return env, argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distgan-submit", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="training config (configs/*.yaml)")
    parser.add_argument("--name", required=True, help="job name and run name: the run is RUN_DIR/NAME")
    parser.add_argument("--run-dir", default="runs", help="where runs live (default: runs)")
    parser.add_argument("--nodes", type=int, default=1, help="1: slurm/single_node.sbatch; more: multi_node.sbatch")
    parser.add_argument("--gpus-per-node", type=int, help="default: the job script's (8)")
    parser.add_argument("--cpus-per-task", type=int, help="CPUs per node for its launcher and processes")
    parser.add_argument("--time", help="time limit, e.g. 24:00:00 (default: the job script's)")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--cpu", action="store_true", help="no GPUs: gloo DDP, --procs-per-node processes per node")
    parser.add_argument("--procs-per-node", type=int, help="default: one per GPU (2 with --cpu)")
    parser.add_argument("--main-addr", help="multi-node rendezvous address, where node names do not resolve")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the job (default: this one)")
    parser.add_argument("--log-dir", default="logs", help="the job log is LOG_DIR/NAME-JOBID.out (default: logs)")
    parser.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                        help="more sbatch options, e.g. --sbatch-arg=--exclusive (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=2000")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")

    env, command = build(args, checkout())
    if args.dry_run:
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(command))
        return 0
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)  # SLURM does not create the log's directory
    proc = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        return proc.returncode
    job = re.search(r"\d+", proc.stdout)
    print(proc.stdout.strip())
    if job:
        print(f"log: {Path(args.log_dir).resolve()}/{args.name}-{job.group()}.out\n"
              f"run: {Path(env['DISTGAN_RUN_DIR']) / args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fault injection: N trials of a 2-rank run (accelerate launch, gloo on CPU), one random fault each at a random
moment, then resumed to the end; counts the faults survived.

    python bench/faults.py --trials 50 [--seed 0] [--kinds kill_rank,int_twice]
    python bench/faults.py --short          # 3 trials, what CI runs (tests/test_faults.py)

Faults: SIGKILL a rank; SIGKILL the launcher; SIGTERM the launcher's process group (what scancel does); SIGINT
once; SIGINT twice; a full disk during a checkpoint (the run directory on a size-limited tmpfs, filled up at the
fault moment; an RLIMIT_FSIZE on rank 0 where tmpfs cannot be mounted); a corrupt chunk (one byte of a shard
flipped before the start, repaired before the resume); a second start on the same run directory.
The moment: after a random number of logged steps. A trial survived when, after resuming to the end:
- the final weights (G, D, EMA) are bitwise those of an uninterrupted run of the same length;
- metrics.jsonl has every logged step exactly once, with the uninterrupted run's values (timings aside);
- no process of the faulted launch is left (60 s after its launcher ended);
- no complete checkpoint was lost (the resume starts at or after the newest one present at the fault);
- every refusal (a second start, a corrupt chunk) said why in one line.
Prints tried / survived per kind and each failure's reason; last line JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import (LAUNCH_2_CPU, TINY, alive, descendants, flip_byte, make_idx_dataset,  # noqa: E402
                      tar_members, weights_digest)

KINDS = ("kill_rank", "kill_launcher", "term_group", "int_once", "int_twice", "disk_full", "corrupt_chunk",
         "second_start")
STEPS, CHECKPOINT_EVERY, LOG_EVERY = 16, 4, 2


def env() -> dict[str, str]:
    return {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def command(data: Path, run_dir: Path) -> list[str]:
    return [*LAUNCH_2_CPU, str(REPO / "distgan" / "train.py"), "--config", str(REPO / "configs/fashion_dcgan.yaml"),
            f"data.path={data}", f"run_dir={run_dir}", "name=t", *TINY, "data.num_workers=1",
            f"train.steps={STEPS}", f"train.checkpoint_every={CHECKPOINT_EVERY}", f"train.log_every={LOG_EVERY}",
            "train.sync_every=2", "train.sample_every=1000"]


def logged(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows]


def newest_checkpoint(run: Path) -> int:
    found = [int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*") if (p / "state.json").exists()]
    return max(found, default=0)


def ranks(launcher: int) -> list[int]:
    return [p for p in descendants(launcher) if "train.py" in _cmdline(p) and _parent(p) == launcher]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


class Trial:
    """One launch with one fault, then resumes until COMPLETED; `problems` lists every invariant broken."""

    def __init__(self, kind: str, rng: random.Random, data: Path, where: Path):
        self.kind, self.rng, self.data, self.where = kind, rng, data, where
        self.run = where / "t"
        self.problems: list[str] = []
        self.err = where / "launch.err"

    def start(self) -> subprocess.Popen:
        return subprocess.Popen(command(self.data, self.where), env=env(), stderr=open(self.err, "w"),
                                stdout=subprocess.DEVNULL, start_new_session=True)

    def wait_logged(self, proc: subprocess.Popen, lines: int) -> bool:
        """Until `lines` steps are logged (the fault's moment); False if the launch ended before."""
        deadline = time.monotonic() + 600
        while len(logged(self.run)) < lines:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return len(ranks(proc.pid)) == 2

    def inject(self, proc: subprocess.Popen) -> None:
        kind, run_ranks = self.kind, ranks(proc.pid)
        if kind == "kill_rank":
            os.kill(self.rng.choice(run_ranks), signal.SIGKILL)
        elif kind == "kill_launcher":
            os.kill(proc.pid, signal.SIGKILL)
        elif kind == "term_group":
            os.killpg(proc.pid, signal.SIGTERM)
        elif kind in ("int_once", "int_twice"):
            os.kill(proc.pid, signal.SIGINT)
            if kind == "int_twice":
                deadline = time.monotonic() + 120
                while b"received SIGINT" not in self.err.read_bytes() and proc.poll() is None:
                    assert time.monotonic() < deadline, "the first SIGINT was not received"
                    time.sleep(0.02)
                os.kill(proc.pid, signal.SIGINT)
        elif kind == "disk_full":
            self.fill_disk(run_ranks[0])
        elif kind == "second_start":  # the first launch paused meanwhile, so that it is surely still running
            paused = [proc.pid, *descendants(proc.pid)]
            for pid in paused:
                os.kill(pid, signal.SIGSTOP)
            try:
                second = subprocess.run(command(self.data, self.where), env=env(), capture_output=True, text=True,
                                        timeout=600)
            finally:
                for pid in paused:
                    os.kill(pid, signal.SIGCONT)
            if second.returncode == 0 or "in use by another run" not in second.stderr:
                self.problems.append(f"second start not refused clearly (exit {second.returncode})")

    def fill_disk(self, rank0: int) -> None:
        """Leave 32 KiB free on the run directory's tmpfs (less than a checkpoint), or cap rank 0's file size."""
        if os.path.ismount(self.where):
            stat = os.statvfs(self.where)
            free = stat.f_bavail * stat.f_frsize
            try:  # the run writes meanwhile: fill until the disk says it is full
                with open(self.where / "ballast", "wb") as f:
                    f.write(b"\0" * max(0, free - 32 * 1024))
            except OSError:
                pass
        else:
            resource.prlimit(rank0, resource.RLIMIT_FSIZE, (32 * 1024, 32 * 1024))

    def execute(self) -> None:
        corrupted = self.corrupt() if self.kind == "corrupt_chunk" else None
        proc = self.start()
        moment = self.rng.randint(1, STEPS // LOG_EVERY - 1)
        at_fault, processes = 0, []
        if corrupted or self.wait_logged(proc, moment):
            at_fault, processes = newest_checkpoint(self.run), descendants(proc.pid)
            if not corrupted:
                self.inject(proc)
        try:
            proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            self.problems.append("the faulted launch did not end within 600 s")
            os.killpg(proc.pid, signal.SIGKILL)
        self.check_gone(processes)
        if corrupted:
            self.check_refused_corrupt(*corrupted)
        (self.where / "ballast").unlink(missing_ok=True)
        self.resume_to_the_end(at_fault)

    def corrupt(self) -> tuple[Path, bytes]:
        shards = sorted(self.data.glob("train-*.tar"))
        shard = self.rng.choice(shards)
        original = shard.read_bytes()
        _, offset, size = self.rng.choice([m for name, m in tar_members(shard).items() if name.endswith(".npy")])
        flip_byte(shard, offset + self.rng.randrange(size))
        return shard, original

    def check_refused_corrupt(self, shard: Path, original: bytes) -> None:
        text = self.err.read_text(errors="replace")
        if shard.name not in text:
            self.problems.append(f"a corrupt chunk of {shard.name} was not named")
        shard.write_bytes(original)

    def check_gone(self, processes: list[int]) -> None:
        deadline = time.monotonic() + 60
        while any(alive(p) for p in processes) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in processes if alive(p)]
        if left:
            self.problems.append(f"{len(left)} process(es) left 60 s after the launcher ended")
            for pid in left:
                os.kill(pid, signal.SIGKILL)

    def resume_to_the_end(self, at_fault: int) -> None:
        for _ in range(3):
            if (self.run / "COMPLETED").exists():
                break
            resumed = subprocess.run(command(self.data, self.where), env=env(), capture_output=True, text=True,
                                     timeout=900)
            found = [int(line.rsplit("step-", 1)[1][:7]) for line in resumed.stderr.splitlines()
                     if "resumed from " in line and "step-" in line]
            if (found[0] if found else 0) < at_fault:
                self.problems.append(f"resumed from step {found[0] if found else 0}, though a checkpoint at "
                                     f"{at_fault} was complete at the fault")
        if not (self.run / "COMPLETED").exists():
            self.problems.append("did not complete after 3 resumes")

    def check_against(self, reference: Path) -> None:
        if not (self.run / "COMPLETED").exists():
            return
        if weights_digest(self.run) != weights_digest(reference):
            self.problems.append("final weights differ from the uninterrupted run's")
        steps = [row["step"] for row in logged(self.run)]
        if len(steps) != len(set(steps)):
            self.problems.append(f"metrics steps logged twice: {sorted(s for s in set(steps) if steps.count(s) > 1)}")
        elif logged(self.run) != logged(reference):
            self.problems.append("metrics differ from the uninterrupted run's")


def make_data(root: Path) -> Path:
    from distgan.data.shards import write_shards
    from distgan.data.sources import read_idx_dataset

    make_idx_dataset(root / "raw", n_train=1000, n_test=100)
    write_shards(read_idx_dataset("fashion-mnist", root / "raw"), root / "shards", samples_per_shard=150,
                 chunk_size=64)
    return root / "shards"


def trial_dir(root: Path, n: int, kind: str) -> Path:
    where = root / f"trial-{n:03d}-{kind}"
    where.mkdir()
    if kind == "disk_full":
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)], capture_output=True)
    return where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--short", action="store_true", help="3 trials (CI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args()
    trials, kinds, rng = 3 if args.short else args.trials, args.kinds.split(","), random.Random(args.seed)
    tried, survived, failures = Counter(), Counter(), []
    with tempfile.TemporaryDirectory(prefix="distgan-faults-") as tmp:
        root = Path(tmp)
        data = make_data(root)
        reference = root / "reference"
        subprocess.run(command(data, reference), env=env(), check=True, capture_output=True, timeout=900)
        for n in range(trials):
            kind = kinds[n % len(kinds)] if args.short else rng.choice(kinds)
            where = trial_dir(root, n, kind)
            trial = Trial(kind, random.Random(rng.random()), data, where)
            try:
                trial.execute()
                trial.check_against(reference / "t")
            except Exception as exc:  # noqa: BLE001  the harness's own failure counts against the trial, not the run
                trial.problems.append(f"harness error: {type(exc).__name__}: {exc}")
            finally:
                if os.path.ismount(where):
                    subprocess.run(["umount", "-l", str(where)], capture_output=True)
            tried[kind] += 1
            survived[kind] += not trial.problems
            failures += [f"trial {n} ({kind}): {p}" for p in trial.problems]
            print(f"trial {n:3d} {kind:14s} {'survived' if not trial.problems else 'FAILED: ' + '; '.join(trial.problems)}",
                  flush=True)
            shutil.rmtree(where, ignore_errors=True)
    for kind in kinds:
        print(f"{kind:14s} tried {tried[kind]:3d}  survived {survived[kind]:3d}")
    print(json.dumps({"date": date.today().isoformat(), "trials": trials, "tried": dict(tried),
                      "survived": dict(survived), "failures": failures}))


if __name__ == "__main__":
    main()

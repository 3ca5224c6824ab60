"""The training core's contracts: the step's in-place state, refused setups, run-directory safety,
signal handling, a full disk, and the host collectives of a 2-rank run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from conftest import LAUNCH_2_CPU, REPO, TINY, run_env
from distgan import training
from distgan.config import ConfigError, load_config
from distgan.losses import LOSS_KINDS
from distgan.training import signals as stop_signals
from distgan.training.step import GANStep

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def tiny(data: Path, run_dir: Path, *extra: str, config: str = "configs/fashion_dcgan.yaml"):
    return load_config(REPO / config, [f"data.path={data}", f"run_dir={run_dir}", "name=t", *TINY, *extra])


def test_the_step_state_is_changed_in_place_only(shards, tmp_path, monkeypatch):
    data, _ = shards
    built = []
    real_init = GANStep.__init__

    def keep(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append((self, {name: getattr(self, name).data_ptr() for name in GANStep.IN_PLACE}))

    monkeypatch.setattr(GANStep, "__init__", keep)
    assert training.train(tiny(data, tmp_path, "train.steps=3")) == "completed"
    step, pointers = built[0]
    assert {name: getattr(step, name).data_ptr() for name in GANStep.IN_PLACE} == pointers
    assert step.bad_total.item() == 0
    for name in GANStep.IN_PLACE:
        with pytest.raises(AttributeError, match="in place only"):
            setattr(step, name, torch.zeros(()))


D_OPTIONS = {"batchnorm": ["model.d_batchnorm=true"], "spectral_norm": ["model.spectral_norm=true"],
             "plain": ["model.d_batchnorm=false"], "dropout": ["model.d_batchnorm=false", "model.d_dropout=0.3"]}


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("option", sorted(D_OPTIONS))
def test_every_loss_and_discriminator_combination_trains_or_is_refused(kind, option, shards, tmp_path):
    data, _ = shards
    extra = [f"loss.kind={kind}", *D_OPTIONS[option], "train.steps=2", "train.checkpoint_every=1"]
    if kind == "wgan-gp" and option == "batchnorm":
        with pytest.raises(ConfigError, match="'loss.kind'=wgan-gp and 'model.d_batchnorm'=true"):
            tiny(data, tmp_path, *extra)
        return
    assert training.train(tiny(data, tmp_path, *extra)) == "completed"
    rows = [json.loads(line) for line in (tmp_path / "t/metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor([r["loss/d"], r["loss/g"]])).all() for r in rows)
    # ADA's overfitting heuristic E[sign(D(real))] is logged wherever D's scores have a sign to read
    assert all(("d/r_t" in r) == (kind != "wgan-gp") and -1 <= r.get("d/r_t", 0) <= 1 for r in rows)
    first, last = (tmp_path / "t/checkpoints/step-0000001", tmp_path / "t/checkpoints/step-0000002")
    for name in ("model.safetensors", "model_1.safetensors"):  # G and D both moved in step 2
        a, b = load_file(str(first / name)), load_file(str(last / name))
        assert any(not torch.equal(a[k], b[k]) for k in a if "weight" in k), name


def test_a_resume_with_another_setup_is_refused_with_every_key_named(shards, tmp_path):
    data, _ = shards
    assert training.train(tiny(data, tmp_path, "train.steps=2")) == "completed"
    for extra, keys in ((["optim.g_lr=1e-3", "loss.kind=hinge"], ["loss.kind: 'bce' -> 'hinge'",
                                                                  "optim.g_lr: 0.0001 -> 0.001"]),
                        (["model.ngf=16"], ["model.ngf: 8 -> 16"]),
                        (["data.batch_size=8"], ["data.batch_size: 16 -> 8"]),
                        (["seed=3"], ["seed: 0 -> 3"])):
        with pytest.raises(training.TrainingError) as error:
            training.train(tiny(data, tmp_path, "train.steps=4", *extra))
        for key in keys:
            assert key in str(error.value)
        assert "name=NEW_NAME" in str(error.value) and "train.allow_config_change=true" in str(error.value)
    assert "g_lr: 0.0001" in (tmp_path / "t/config.yaml").read_text()  # the record is untouched
    # Forced with a changed width: the checkpoint cannot fit, and the error says so (no raw traceback).
    with pytest.raises(training.TrainingError, match="does not fit this config's networks"):
        training.train(tiny(data, tmp_path, "train.steps=4", "model.ngf=16", "train.allow_config_change=true"))
    # How long it runs and how it is observed may change: recorded, and the run goes on.
    assert training.train(tiny(data, tmp_path, "train.steps=4", "train.log_every=1", "data.num_workers=1")) \
        == "completed"
    changes = json.loads((tmp_path / "t/config-history/changes.jsonl").read_text().splitlines()[-1])
    assert changes["changes"] == {"train.steps": [2, 4], "train.log_every": [2, 1], "data.num_workers": [0, 1]}
    assert not changes["forced"]


def test_a_resume_on_other_data_is_refused(shards, tmp_path):
    from distgan.data.shards import write_shards
    from distgan.data.sources import read_idx_dataset

    data, _ = shards
    assert training.train(tiny(data, tmp_path, "train.steps=2")) == "completed"
    other = tmp_path / "other"
    write_shards(read_idx_dataset("fashion-mnist", tmp_path / "raw"), other, samples_per_shard=100, chunk_size=64)
    with pytest.raises(training.TrainingError, match=r"data \(dataset.json contents\)"):
        training.train(tiny(other, tmp_path, "train.steps=4"))


def test_signal_handlers_are_the_runs_alone(shards, tmp_path):
    data, _ = shards
    before = {s: signal.getsignal(s) for s in stop_signals.STOP_SIGNALS}
    assert training.train(tiny(data, tmp_path, "train.steps=2")) == "completed"
    assert {s: signal.getsignal(s) for s in stop_signals.STOP_SIGNALS} == before


def test_a_second_ctrl_c_stops_at_once_but_never_inside_a_checkpoint_write(monkeypatch):
    monkeypatch.setattr(stop_signals, "SAME_PRESS_S", 0.0)
    with stop_signals.StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated TERM (a launcher forwarding it) changes nothing
        with pytest.raises(stop_signals.StopNow, match="after the checkpoint write"):
            with stop.critical():
                os.kill(os.getpid(), signal.SIGINT)
                written = True  # the section ran to its end
        assert written
        with pytest.raises(stop_signals.StopNow, match="at once"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    monkeypatch.setattr(stop_signals, "SAME_PRESS_S", 60.0)
    with pytest.raises(stop_signals.StopNow, match="at once"):
        with stop_signals.StopSignals():  # a rank in a session of its own: every SIGINT is a press of its own
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    with pytest.raises(stop_signals.StopNow, match="at once"):
        with stop_signals.StopSignals():  # torch's agent: the first press forwarded as SIGINT, the second as SIGTERM
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    monkeypatch.setattr(stop_signals, "_shares_launchers_process_group", lambda: True)
    with stop_signals.StopSignals() as stop:  # in the launcher's group: Ctrl-C, then the launcher forwarding it
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == "SIGINT"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the lost StopNow, on purpose
def test_a_second_ctrl_c_lost_in_a_finalizer_still_stops_at_the_next_step():
    """The handler's StopNow can land where Python ignores exceptions (seen: an at-fork hook while a loader
    forked its workers, under load): the loop's per-step check raises it again."""

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # the second press arrives while a finalizer runs

    with stop_signals.StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        stop.raise_if_stopped_now()  # one press: nothing to raise
        Finalized()  # its StopNow is printed as "Exception ignored in" and lost
        with pytest.raises(stop_signals.StopNow, match="at once"):
            stop.raise_if_stopped_now()


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root) to fill a disk for real")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_during_a_checkpoint_stops_cleanly_and_keeps_the_last_one(shards, small_disk):
    data, _ = shards
    args = ["train.checkpoint_every=2", "train.sample_every=1000", "train.log_every=1000"]
    assert training.train(tiny(data, small_disk, "train.steps=2", *args)) == "completed"
    AcceleratorState._reset_state(reset_partial_state=True)  # each run as its own process would start
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * (free - 64 * 1024))  # room for the config record, not a checkpoint
    with pytest.raises(training.TrainingError, match=r"writing checkpoint .*step-0000004 failed .*rank 0: .*"
                                                    r"No space left.*previous checkpoint is intact"):
        training.train(tiny(data, small_disk, "train.steps=4", *args))
    assert sorted(p.name for p in (small_disk / "t/checkpoints").iterdir()) == ["step-0000002"]
    (small_disk / "filler").unlink()
    AcceleratorState._reset_state(reset_partial_state=True)
    assert training.train(tiny(data, small_disk, "train.steps=4", *args)) == "completed"
    state = json.loads((small_disk / "t/checkpoints/step-0000004/state.json").read_text())
    assert state["step"] == 4


@pytest.mark.slow
def test_a_two_rank_run_makes_one_host_collective_per_sync_not_per_step(shards, tmp_path):
    data, _ = shards
    counts = {}
    for steps in (20, 60):
        out = tmp_path / f"s{steps}"
        out.mkdir()
        probe = [str(REPO / "tests/ddp_collectives_probe.py"), str(out), str(REPO / "configs/fashion_dcgan.yaml"),
                 f"data.path={data}", f"run_dir={out}", "name=t", *TINY, f"train.steps={steps}",
                 "train.sync_every=20", "train.log_every=1000", "train.sample_every=1000",
                 "train.checkpoint_every=1000", "data.num_workers=1"]
        proc = subprocess.run(LAUNCH_2_CPU + probe, env=run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1"),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        counts[steps] = [json.loads((out / f"rank{r}.json").read_text())["host_collectives"] for r in (0, 1)]
    per_step = [(counts[60][r] - counts[20][r]) / 40 for r in (0, 1)]
    print("host collectives per step (sync_every=20):", per_step)
    assert per_step == [1 / 20, 1 / 20]  # the sync at steps 40 and 60; nothing per step


@pytest.mark.slow
def test_global_batchnorm_over_two_ranks_equals_one_process_on_the_whole_batch(tmp_path):
    probe = [str(REPO / "tests/ddp_sync_bn_probe.py"), str(tmp_path)]
    proc = subprocess.run(LAUNCH_2_CPU + probe, env=run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5, requires_grad=True)
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    y = bn(x)
    (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
    for rank in (0, 1):
        got = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        half = slice(4 * rank, 4 * rank + 4)
        torch.testing.assert_close(got["y"], y[half].detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["x_grad"], x.grad[half], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["running_mean"], bn.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["running_var"], bn.running_var, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["weight_grad"], bn.weight.grad, rtol=1e-4, atol=1e-4)


def test_augmentation_r1_and_a_schedule_train_and_resume_exactly(shards, tmp_path):
    """Adaptive p, lazy R1 and a cosine schedule: logged, checkpointed, and a resume ends bitwise where an
    uninterrupted run does."""
    data, _ = shards
    small = ["aug.policy=color,translation,cutout", "aug.adaptive=true", "aug.p=0.2", "aug.interval=2",
             "aug.speed_images=500", "loss.r1_gamma=1.0", "loss.r1_every=2", "optim.schedule=cosine",
             "optim.warmup_steps=4", "train.checkpoint_every=4", "model.d_batchnorm=false", "train.log_every=1"]
    assert training.train(tiny(data, tmp_path / "straight", "train.steps=8", *small)) == "completed"
    AcceleratorState._reset_state(reset_partial_state=True)
    assert training.train(tiny(data, tmp_path / "resumed", "train.steps=4", *small)) == "completed"
    AcceleratorState._reset_state(reset_partial_state=True)
    assert training.train(tiny(data, tmp_path / "resumed", "train.steps=8", *small)) == "completed"
    rows = [json.loads(line) for line in (tmp_path / "straight/t/metrics.jsonl").read_text().splitlines()]
    assert len({r["aug/p"] for r in rows}) > 1 and all(0 <= r["aug/p"] <= 1 for r in rows)  # p moved
    # one step per log line: d/r_t is the mean of the batch's 16 signs, so 16 x r_t is a whole number
    assert all(abs(16 * r["d/r_t"] - round(16 * r["d/r_t"])) < 1e-5 for r in rows)
    lrs = [r["lr/g"] for r in rows]
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and lrs[:peak + 1] == sorted(lrs[:peak + 1])  # warm-up, then decay
    assert lrs[peak:] == sorted(lrs[peak:], reverse=True) and lrs[-1] < lrs[peak]
    last = lambda run: tmp_path / run / "t/checkpoints/step-0000008"  # noqa: E731
    for name in ("model.safetensors", "model_1.safetensors", "ema.safetensors", "augment.safetensors"):
        a, b = load_file(str(last("straight") / name)), load_file(str(last("resumed") / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    resumed = [json.loads(line) for line in (tmp_path / "resumed/t/metrics.jsonl").read_text().splitlines()]
    assert [r["lr/g"] for r in resumed] == [r["lr/g"] for r in rows]


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    for child in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split():
        if f"\0RANK={rank}\0" in "\0" + Path(f"/proc/{child}/environ").read_text() + "\0":
            return int(child)
    raise AssertionError(f"rank {rank} of launcher {launcher.pid} not found")


@pytest.mark.slow
def test_a_killed_rank_is_named_by_the_other_which_exits_and_the_run_resumes_bitwise(shards, tmp_path):
    data, _ = shards
    env = run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")

    def command(run_dir: Path, steps: int) -> list[str]:
        return LAUNCH_2_CPU + [str(REPO / "distgan/train.py"), "--config", str(REPO / "configs/fashion_dcgan.yaml"),
                               f"data.path={data}", f"run_dir={run_dir}", "name=t", *TINY, f"train.steps={steps}"]

    proc = subprocess.Popen(command(tmp_path / "killed", 4000), env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (tmp_path / "killed/t/checkpoints/step-0000008/state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before step 8"
        time.sleep(0.1)
    os.kill(rank_pid(proc, 1), signal.SIGKILL)
    killed_at = time.time()
    stderr = proc.communicate(timeout=90)[1]
    assert time.time() - killed_at < 60 and proc.returncode != 0
    assert "distgan-train: error: lost contact with rank 1 at step" in stderr
    last = max(int(p.name.split("-")[1]) for p in (tmp_path / "killed/t/checkpoints").glob("step-*"))
    assert last >= 8 and last % 4 == 0
    # train.resume=auto goes on from the last checkpoint and ends where an uninterrupted run does.
    for run_dir in (tmp_path / "killed", tmp_path / "straight"):
        done = subprocess.run(command(run_dir, last + 4), env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    final = f"t/checkpoints/step-{last + 4:07d}"
    for name in ("model.safetensors", "model_1.safetensors", "ema.safetensors"):
        a, b = (load_file(str(tmp_path / run / final / name)) for run in ("killed", "straight"))
        assert all(torch.equal(a[k], b[k]) for k in a), name

"""bench/quality.py's matrix: variants and seeds of one config, a --limit subset, and the per-variant figures."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_variant_overrides_keep_list_values_whole(quality):
    tag, overrides = quality.parse_variant("diffaug:aug.policy=color,translation,cutout,aug.p=1.0")
    assert tag == "diffaug"
    assert overrides == ["aug.policy=color,translation,cutout", "aug.p=1.0"]
    assert quality.parse_variant("none") == ("none", [])
    with pytest.raises(ValueError, match="tag"):
        quality.parse_variant("a b:loss.r1_gamma=1")
    with pytest.raises(ValueError, match="not key=value"):
        quality.parse_variant("x:color,aug.p=1")


def test_plan_runs_variants_times_seeds(quality):
    args = quality.parse_args(["--data", "d", "--config", "configs/fashion_house.yaml", "--steps", "10",
                               "--seeds", "0,1", "--set", "model.ngf=32", "--set", "r1:loss.r1_every=4",
                               "--variant", "none", "--variant", "r1:loss.r1_gamma=1"])
    runs = quality.plan_runs(args)
    assert [r.name for r in runs] == ["none-s0", "none-s1", "r1-s0", "r1-s1"]
    assert runs[1].overrides == ("model.ngf=32", "seed=1")
    assert runs[2].overrides == ("model.ngf=32", "loss.r1_every=4", "loss.r1_gamma=1", "seed=0")
    # the configs form: one variant per file, the config's own seed
    args = quality.parse_args(["--data", "d", "--configs", "configs/mnist_gan.yaml", "--steps", "10"])
    assert [(r.name, r.seed) for r in quality.plan_runs(args)] == [("mnist_gan", None)]
    with pytest.raises(SystemExit):
        quality.parse_args(["--data", "d", "--variant", "x", "--steps", "1"])  # no --config to vary


def test_read_metrics_skips_start_up_and_evaluation_intervals(tmp_path, quality):
    rows = [{"step": 10, "perf/images_per_s": 5.0},  # start-up
            {"step": 20, "perf/images_per_s": 100.0}, {"step": 20, "eval/fid": 50.0},
            {"step": 30, "perf/images_per_s": 1.0},  # held the evaluation at step 20
            {"step": 40, "perf/images_per_s": 110.0, "aug/p": 0.25, "d/r_t": 0.7},
            {"step": 40, "eval/fid": 40.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    figures = quality.read_metrics(path)
    assert figures["images_per_s"] == 105.0
    assert (figures["aug_p"], figures["r_t"]) == (0.25, 0.7)
    assert figures["fid_curve"] == [[20, 50.0], [40, 40.0]]


def test_variant_figures_mean_spread_and_ratios(quality):
    runs = [quality.Run(v, Path("c.yaml"), (), s) for v in ("none", "aug") for s in (0, 1)]
    record = {"kid": 0.1, "steps": 100, "train_seconds": 10.0, "cpu_seconds": 8.0, "aug_p": None}
    scored = {"none-s0": {**record, "fid": 40.0, "images_per_s": 100.0, "fid_curve": [[50, 45.0], [100, 40.0]]},
              "none-s1": {**record, "fid": 44.0, "images_per_s": 100.0, "fid_curve": [[50, 47.0], [100, 44.0]]},
              "aug-s0": {**record, "fid": 30.0, "images_per_s": 80.0, "aug_p": 0.5, "fid_curve": []},
              "aug-s1": {**record, "fid": 32.0, "images_per_s": 80.0, "aug_p": 0.7, "fid_curve": []},
              "aug-s2": {**record, "fid": 31.0, "images_per_s": 80.0, "cpu_seconds": 11.0}}  # not planned: ignored
    figures = quality.variant_figures(runs, scored, "none")
    assert figures["none"]["fid"] == 42.0 and figures["none"]["fid_seeds"] == [40.0, 44.0]
    assert figures["none"]["fid_sd"] == pytest.approx(2.828, abs=1e-3)
    assert figures["none"]["fid_curve"] == [[50, 46.0], [100, 42.0]]
    assert figures["aug"]["fid_change"] == pytest.approx(31 / 42 - 1, abs=1e-4)
    assert figures["aug"]["step_time_ratio"] == 1.25  # 100 / 80 images/s: each step takes 1.25x as long
    assert figures["aug"]["aug_p"] == 0.6 and figures["aug"]["cpu_seconds"] == 16.0
    assert figures["aug"]["cpu_time_ratio"] == 1.0
    # a variant whose runs all failed is left out; a single seed has no spread
    figures = quality.variant_figures(runs, {"none-s0": scored["none-s0"]}, "none")
    assert list(figures) == ["none"] and figures["none"]["fid_sd"] is None


@pytest.mark.slow  # runs `distgan-data prepare` in a subprocess
def test_limit_prepares_a_subset_once_and_keeps_the_classifier_off_it(tmp_path, idx_dataset, quality):
    from distgan.data.shards import write_shards
    from distgan.data.sources import read_idx_dataset

    raw_dir, _ = idx_dataset
    full = tmp_path / "full"
    raw = read_idx_dataset("fashion-mnist", raw_dir)
    write_shards(raw, full, samples_per_shard=500)
    args = quality.parse_args(["--data", str(full), "--limit", "120", "--steps", "1", "--out-dir",
                               str(tmp_path / "out")])
    subset = quality.training_data(args)
    manifest = json.loads((subset / "dataset.json").read_text())
    assert manifest["splits"]["train"]["num_samples"] == 120
    assert manifest["splits"]["test"]["num_samples"] == 200
    stamp = (subset / "dataset.json").stat().st_mtime_ns
    assert quality.training_data(args) == subset and (subset / "dataset.json").stat().st_mtime_ns == stamp

    args = quality.parse_args(["--data", str(subset), "--features", "domain", "--steps", "1"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTGAN_CACHE", str(tmp_path / "cache"))  # no classifier there: it would be trained
        with pytest.raises(SystemExit, match="full set"):
            quality.ensure_domain_model(args)


@pytest.mark.slow  # three short training runs in subprocesses
def test_extend_resumes_a_finished_run_to_the_longer_budget(tmp_path, shards, quality):
    """--extend trains 4 more steps onto a 4-step run; the result is the 8-step run trained in one go."""
    from safetensors.torch import load_file

    data, _ = shards

    def run(out: str, steps: int, extend: bool) -> dict:
        args = quality.parse_args(["--data", str(data), "--config", "configs/fashion_house.yaml", "--steps",
                                   str(steps), "--out-dir", str(tmp_path / out)] + ["--extend"] * extend)
        args.train_data_path, args.eval_overrides, args.concurrent = data, [], 1
        overrides = ("model.ngf=8", "model.ndf=8", "data.batch_size=16", "data.num_workers=0",
                     "train.sample_every=100", "aug.policy=color,translation", "aug.adaptive=true",
                     "aug.interval=2", "aug.speed_images=64", "loss.r1_gamma=1.0", "loss.r1_every=2")
        return quality.train(quality.Run("v", REPO / "configs/fashion_house.yaml", overrides, 0), args)

    short = run("a", 4, extend=False)
    (tmp_path / "a" / "v-s0" / "COMPLETED").unlink()  # as an extension cut short before its first checkpoint leaves it
    longer = run("a", 8, extend=True)
    assert longer["steps"] == 8 and longer["extended_from"] == [4]
    assert longer["cpu_seconds"] > short["cpu_seconds"] and longer["train_seconds"] > short["train_seconds"]
    fresh = run("b", 8, extend=False)
    assert "extended_from" not in fresh

    def weights(out: str) -> dict:
        return load_file(tmp_path / out / "v-s0" / "generator" / "generator.safetensors")

    a, b = weights("a"), weights("b")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    # without --extend a longer budget retrains from the start
    again = run("a", 12, extend=False)
    assert "extended_from" not in again and again["steps"] == 12


def test_curves_plot_each_variant_from_the_runs_records(tmp_path, quality):
    from PIL import Image

    runs = [quality.Run(v, Path("c.yaml"), (), s) for v in ("none", "aug") for s in (0, 1)]
    scored = {r.name: {"fid": 40.0 + s, "kid": 0.1, "steps": 30, "train_seconds": 1.0, "cpu_seconds": 1.0,
                       "images_per_s": 10.0, "fid_curve": [[10, 90.0], [20, 60.0], [30, 50.0 + s]],
                       "r_t_curve": [[k, 0.01 * k] for k in range(5, 31, 5)]}
              for r in runs for s in [r.seed]}
    del scored["aug-s1"]["r_t_curve"]  # a run logged before d/r_t existed: left out of its variant's mean
    figures = quality.variant_figures(runs, scored, "none")
    args = quality.parse_args(["--data", "d", "--steps", "1"])
    quality.plot_curves(runs, scored, figures, tmp_path / "curves.png", args)
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.size == (1300, 480)


def test_a_cpu_budget_stops_the_run_once_its_processes_spent_it(tmp_path, shards, quality):
    """--cpu-minutes: the run's STOP file is written when the CPU time of its process tree reaches the budget (not
    the wall clock: on a shared machine that depends on the others); the run then stops with its generator."""
    data, _ = shards
    args = quality.parse_args(["--data", str(data), "--configs", "configs/fashion_dcgan.yaml", "--cpu-minutes",
                               "0.1", "--out-dir", str(tmp_path)])
    args.train_data_path, args.eval_overrides, args.concurrent = data, [], 1
    overrides = ("model.ngf=8", "model.ndf=8", "data.batch_size=16", "data.num_workers=0", "train.sample_every=100",
                 "train.log_every=2")
    trained = quality.train(quality.Run("v", REPO / "configs/fashion_dcgan.yaml", overrides, None), args)
    assert trained["budget_cpu_minutes"] == 0.1 and trained["steps"] > 0
    assert trained["cpu_seconds"] >= 6.0  # stopped after the budget was spent, not before
    assert (tmp_path / "v" / "STOPPED").exists() and not (tmp_path / "v" / "STOP").exists()

"""The ingest sizing tool's pure parts (:mod:`raysemi.bench.ingest`, what ``experiments/benchmarks/ingest.py``
runs): the CPUs-per-GPU arithmetic, the simulated training worker and the test images (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import raysemi.bench.ingest as ingest
from raysemi.data.formats import open_format

BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"


def test_cpus_per_gpu_is_demand_over_supply_per_cpu_over_the_load_limit():
    # 8 images every 0.5 s = 16 images/s; 4 images per CPU-second -> 4 CPUs at full load, 5 at a 0.8 limit.
    assert ingest.cpus_per_gpu(8, 0.5, 4.0) == pytest.approx(4.0)
    assert ingest.cpus_per_gpu(8, 0.5, 4.0, max_load=0.8) == pytest.approx(5.0)
    # mmsegmentation's 2 images per 0.85 s at 10 images per CPU-second: 0.235 CPUs.
    assert ingest.cpus_per_gpu(2, 0.85, 10.0) == pytest.approx(2 / 0.85 / 10.0)
    with pytest.raises(ValueError, match="step_time_s=0"):
        ingest.cpus_per_gpu(8, 0, 4.0)


def test_max_load_is_the_last_point_before_wait_reaches_the_limit():
    points = [{"load": 0.25, "wait_fraction": 0.01}, {"load": 1.0, "wait_fraction": 0.20},
              {"load": 0.5, "wait_fraction": 0.02}, {"load": 0.75, "wait_fraction": 0.049},
              {"load": 1.5, "wait_fraction": 0.03}]  # a lucky point past a failing one does not count
    assert ingest.max_load_under(points) == 0.75
    assert ingest.max_load_under(points, wait_limit=0.02) == 0.25
    assert ingest.max_load_under([{"load": 0.25, "wait_fraction": 0.3}]) is None


def test_voc_like_tree_has_voc_sizes_codecs_and_reads_with_the_voc_reader(tmp_path):
    ingest.write_voc_like(tmp_path, count=3)
    base = tmp_path / "VOCdevkit" / "VOC2012"
    with Image.open(base / "JPEGImages" / "2007_000000.jpg") as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (500, 375))
    with Image.open(base / "SegmentationClass" / "2007_000000.png") as mask:
        assert (mask.format, mask.mode, mask.size) == ("PNG", "P", (500, 375))
        assert mask.getpalette()[:6] == [0, 0, 0, 128, 0, 0]  # VOC colour map: background, aeroplane
        values = set(np.unique(np.array(mask)).tolist())
    assert 0 in values and 255 in values and values <= set(range(21)) | {255}
    reader = open_format("voc", tmp_path)
    assert [s.image.name for s in reader.samples("train")] == ["2007_000000.jpg", "2007_000001.jpg",
                                                                "2007_000002.jpg"]
    assert len(reader.samples("val")) == 2


def test_cityscapes_like_tree_has_cityscapes_names_codecs_and_label_ids(tmp_path):
    assert ingest.CITYSCAPES.size == (1024, 2048)
    ingest.write_cityscapes_like(tmp_path, count=1, size=(64, 128))
    image_path = tmp_path / "leftImg8bit" / "train" / "synth" / "synth_000000_000019_leftImg8bit.png"
    mask_path = tmp_path / "gtFine" / "train" / "synth" / "synth_000000_000019_gtFine_labelIds.png"
    with Image.open(image_path) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (128, 64))
    with Image.open(mask_path) as mask:
        assert (mask.format, mask.mode, mask.size) == ("PNG", "L", (128, 64))
        ids = set(np.unique(np.array(mask)).tolist())
    assert {1, 7, 23} <= ids <= set(ingest.CITYSCAPES_IDS.values())  # ego vehicle, road, sky at least
    train_ids = open_format("cityscapes", tmp_path).decode_mask(mask_path)
    assert train_ids[0, 0] == 10 and train_ids[-1, 0] == 255  # sky on top, ego vehicle (ignored) at the bottom


def test_photo_like_is_neither_flat_nor_noise():
    """A 1/f texture: neighbouring pixels agree far more than distant ones, and no region is flat."""
    image = ingest.photo_like(np.random.default_rng(0), np.zeros((128, 128), np.uint8)).astype(float)
    grey = image.mean(axis=2)
    neighbour = np.abs(grey[:, 1:] - grey[:, :-1]).mean()
    distant = np.abs(grey[:, 64:] - grey[:, :-64]).mean()
    assert grey.std() > 10 and neighbour < distant / 3


def test_summary_sizes_each_published_step_with_the_slower_cpu_setting_and_the_measured_load_limit():
    def ray_row(cpus, rate, repeat):
        return {"kind": "voc_like", "crop": 321, "cpus": cpus, "repeat": repeat, "images_per_s": 1.0,
                "images_per_cpu_s": rate, "images_per_worker_cpu_s": rate * 2, "load_average": 3.0,
                "seconds": 10.0, "cpu_seconds": {"workers": 1.0, "driver": 1.0, "daemons": 0.5}}

    # 1 CPU: 40 and 60 (mean 50); 2 CPUs: 30 and 50 (mean 40) -> sizing uses 40 images per CPU-second.
    throughput = [ray_row(1, 40.0, 0), ray_row(1, 60.0, 1), ray_row(2, 30.0, 0), ray_row(2, 50.0, 1),
                  {"kind": "voc_like", "crop": 321, "cpus": 0, "repeat": 0, "mode": "plain loop",
                   "images_per_cpu_s": 130.0, "load_average": 3.0}]
    scaleout = [{"consumers": n, "load": n / 4, "wait_fraction": w, "first_wait_s": 1.0}
                for n, w in ((1, 0.0), (2, 0.01), (3, 0.04), (4, 0.12))]
    published = [ingest.PublishedStep("VOC 321, 6 images per step", "voc_like", 321, 6, 0.669, "a log"),
                 ingest.PublishedStep("Cityscapes", "cityscapes_like", 768, 2, 0.85, "a table")]
    summary = ingest.summarise(throughput, scaleout, published, faster_gpu=3.0)

    assert summary["max_load_under_5pct_wait"] == 0.75
    assert summary["cases"]["voc_like/321/plain"]["images_per_cpu_s"] == [130.0]
    assert summary["cases"]["voc_like/321/2"]["daemon_cpu_per_s"] == [0.05, 0.05]
    voc321 = [row for row in summary["sizing"] if row["stream"] == "voc_like crop 321"]
    assert len(summary["sizing"]) == 1  # the Cityscapes step needs a stream this summary has no rows for
    # 6 images per 0.669 s = 8.97 images/s; / 40 per CPU-second / 0.75 = 0.30 CPUs per GPU; 0.90 at a 3x faster GPU.
    assert voc321[0]["images_per_cpu_s"] == 40.0
    assert voc321[0]["cpus_per_gpu"] == pytest.approx(6 / 0.669 / 40.0 / 0.75, abs=0.005)
    assert voc321[0]["cpus_per_gpu_faster_gpu"] == pytest.approx(3 * 6 / 0.669 / 40.0 / 0.75, abs=0.005)


def test_a_simulated_worker_counts_the_wait_after_the_first_batch_and_sleeps_a_step_each_batch():
    """A fake clock: each batch arrives 2 s after it is asked for (the first 10 s), each step sleeps 0.5 s."""
    now = [0.0]
    waits = iter([10.0, 2.0, 2.0, 2.0])

    def batches():
        for wait in waits:
            now[0] += wait
            yield "batch"

    def sleep(seconds: float) -> None:
        now[0] += seconds

    result = ingest.consume(batches(), 0.5, clock=lambda: now[0], sleep=sleep)
    # after the first batch: 3 waits of 2 s and 4 steps of 0.5 s = 8 s, of which 6 s waiting
    assert result == {"steps": 4, "first_wait_s": 10.0, "wait_s": 6.0, "seconds": 8.0}
    with pytest.raises(ValueError, match="no batch"):
        ingest.consume(iter([]), 0.5)


def test_the_script_rebuilds_the_committed_results_page_from_the_committed_record(benchmark_script):
    """``ingest.py --table`` on the committed ``ingest.json``: the same summary and the same ``ingest.md``."""
    script = benchmark_script(BENCHMARKS / "ingest.py")
    record = json.loads((BENCHMARKS / "results" / "ingest.json").read_text())
    assert ingest.summarise(record["throughput"], record["scaleout"], ingest.PUBLISHED,
                            script.FASTER_GPU) == record["summary"]
    page = ingest.results_page(record, script.FASTER_GPU, script.ray_ingest.BENCH_BATCHES_PER_BLOCK)
    assert page == (BENCHMARKS / "results" / "ingest.md").read_text()


def test_rows_appended_as_json_lines_read_back_in_order(tmp_path):
    out = tmp_path / "rows.jsonl"
    assert ingest.read_rows(out) == []  # no file yet: no rows
    ingest.append_row(out, {"cpus": 1, "images_per_s": 12.5})
    ingest.append_row(out, {"cpus": 2, "images_per_s": 20.0})
    assert ingest.read_rows(out) == [{"cpus": 1, "images_per_s": 12.5}, {"cpus": 2, "images_per_s": 20.0}]


def test_a_part_run_apart_that_fails_ends_the_benchmark_with_its_exit_code(tmp_path):
    ingest.run_apart(["-c", "pass"], tmp_path)
    with pytest.raises(SystemExit, match="exit code 3"):
        ingest.run_apart(["-c", "raise SystemExit(3)"], tmp_path)


def test_simulated_workers_each_read_an_equal_part_of_the_stream(ray_local):
    """24 rows split between 2 actors: 12 each, 3 batches of 4; each step sleeps 0.05 s."""
    from raysemi.ray.ingest import measure_scaleout, start_consumers

    dataset = ray_local.data.from_items([{"image": np.full((2, 2), i, np.uint8)} for i in range(24)])
    row = measure_scaleout(dataset, start_consumers(2, ingest.consume), local_batch=4, step_s=0.05)
    assert (row["consumers"], row["local_batch"], row["step_s"], row["steps_per_consumer"]) == (2, 4, 0.05, 3)
    assert 0.0 <= row["wait_fraction"] < 1.0
    # after its first batch each actor takes 2 more batches of 4 in at least 3 steps of 0.05 s: <= 8 / 0.15 * 2
    assert 0 < row["delivered_images_per_s"] <= 2 * 8 / 0.15

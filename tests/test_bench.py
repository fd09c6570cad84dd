"""The published benchmark tables are the committed results, rendered by bench/report.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import report
from config import OptimizationConfig
from conftest import ROOT, TEST_DIR

pytestmark = pytest.mark.slow  # the bench scripts run

REGENERATE = "python -m bench.report"
AUTHOR_PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", ROOT / "CONTRIBUTING.md"]


def test_the_generated_sections_are_current():
    sections, placed = report.sections(), set()
    for path in report.PAGES:
        page = path.read_text()
        placed |= {name for name in sections if report.markers(name)[0] in page}
        assert report.update(page, sections) == page, f"{path.relative_to(ROOT)} is stale: {REGENERATE}"
    assert placed == set(sections), f"sections without a place: {set(sections) - placed}"
    assert report.markers("summary")[0] in (ROOT / "README.md").read_text()


def test_pages_for_authors_name_no_machine_paths():
    for path in AUTHOR_PAGES:
        text = path.read_text()
        for word in ("/root/out", "../shared", ".whl"):
            assert word not in text, f"{path.relative_to(ROOT)} mentions {word}"


def test_results_hold_no_scripts():
    assert not list((ROOT / "bench" / "results").rglob("*.py")), "scripts belong in bench/, run with python -m bench.NAME"


def synthetic_run(folder: Path, name: str, ms: float, eager_ms: float = 150.0, command: str = "") -> Path:
    rows = [dict(rung="eager", size="1024x1024", ms=eager_ms, rel_error=0.07),
            dict(rung="aot_fp8_row", size="1024x1024", ms=ms, rel_error=0.07)]
    env = dict(torch="t", diffusers="d", torchao="a", command=command or name)
    path = folder / f"{name}.json"
    options = dict(OptimizationConfig().inductor_configs)
    path.write_text(json.dumps(dict(env=env, blocks=[19, 38], inductor_configs=options, rows=rows)))
    return path


def test_seconds_per_image_are_against_eager_of_the_same_run_and_the_default_from_its_run(tmp_path):
    def run(name: str, **seconds_by_variant: float) -> Path:
        rows = [dict(variant=variant, workload="1024x1024x28", seconds=seconds, images_per_minute=60 / seconds, text_s=0.04,
                     denoise_s=seconds - 0.13, decode_s=0.09, first_image_s=seconds,
                     rel_error_vs_eager=None if variant == "eager" else 7e-3)
                for variant, seconds in seconds_by_variant.items()]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(dict(env=dict(torch="t", diffusers="d", torchao="a", command=name), rows=rows)))
        return path

    # torch.compile + FP8 measured in a third run only, against that run's own eager image; the template's
    # column from the run of its current defaults alone ("two"), eager's from every run.
    runs = [run("one", eager=5.0, aot=2.5), run("two", eager=5.2, aot=2.8), run("three", eager=4.8, torch_compile_fp8=3.0)]
    summary = report.render_pipeline_summary(runs, default=runs[1])
    assert "| 1024x1024, 28 steps | 4.80-5.20 s | 3.00 s (1.60x) | 2.80 s (1.86x) | 12 -> 21 |" in summary


def test_each_plan_is_quoted_from_the_latest_file_that_measured_it(tmp_path):
    def run(name: str, **seconds_by_variant: float) -> Path:
        rows = [dict(variant=variant, workload="1024x1024x28", seconds=s) for variant, s in seconds_by_variant.items()]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(dict(env=dict(card="NVIDIA H100 80GB HBM3", command=name), rows=rows)))
        return path

    # The second file re-measured Blackwell's plan after a fix: its row, against its own eager image, replaces the first's.
    files = [run("pipeline", eager=5.0, aot=2.5, aot_sm120=40.0), run("pipeline-sm120-fixed", eager=5.2, aot_sm120=2.6)]
    sentence = report.render_plans_summary(files)
    assert sentence.startswith("On an H100 (")
    assert "Hopper's plan 2.50 s (2.00x)" in sentence and "3.48" not in sentence
    assert "(FP8 per tensor, bf16 attention) 2.60 s (2.00x)" in sentence and "40.00" not in sentence


def test_the_memory_summary_gives_each_sizes_largest_peak_and_the_segments_the_workers_had(tmp_path):
    def peak(device: float, allocated: float, expandable: bool | None) -> dict:
        return dict(device_peak_gb=device, peak_allocated_gb=allocated, peak_reserved_gb=device - 1,
                    expandable_segments=expandable)

    def run(expandable: bool | None) -> Path:
        requests = [dict(width=w, height=w, worker=worker, lora="", **peak(device, allocated, expandable))
                    for w, worker, device, allocated in [(1024, "fresh", 26.0, 23.4), (2048, "fresh", 40.0, 32.0),
                                                        (2048, "reused", 44.0, 32.8), (1024, "reused", 30.0, 24.2)]]
        path = tmp_path / f"{expandable}.json"
        path.write_text(json.dumps(dict(
            card="NVIDIA H100 80GB HBM3", torch="t", memory_cap_gb=48.0, line_90_gb=43.2,
            command="bench_zerogpu.py --lora-rank 16",
            memory=dict(largest="request reused 2048x2048", verdict="over the 90% line by 0.8 GB"),
            starts=[dict(start="empty cache", startup_peak=peak(37.1, 34.6, expandable), requests=requests)])))
        return path

    summary = report.render_zerogpu_memory_summary(run(None))  # a run from before the workers reported their segments
    assert "rank-16 LoRA" in summary and "fixed segments" in summary and "startup 37.1 GB" in summary
    assert "1024x1024 30.0 GB (24.2 allocated), 2048x2048 44.0 GB (32.8 allocated)" in summary
    assert "expandable segments" in report.render_zerogpu_memory_summary(run(True))
    table = report.render_zerogpu_memory([run(True)])
    assert "| 2048x2048, reused worker, LoRA none | 32.8 GB | 43.0 GB | 44.0 GB |" in table


def test_the_summary_shows_the_range_over_runs(tmp_path):
    cold = tmp_path / "cold.json"
    cold.write_text(json.dumps({"rows": {"aot, empty caches": {"compile_or_load_s": 60.3},
                                         "aot, cached program": {"compile_or_load_s": 1.1}}}))
    runs = [synthetic_run(tmp_path, "a", 96.0, eager_ms=172.8), synthetic_run(tmp_path, "b", 97.5, eager_ms=170.6)]
    default = list(report.SPEED.values())[-1]  # the summary's rung is the app's default, with CUDA graphs
    assert default.startswith("aot_fp8_row") and default.endswith("+cudagraph")
    for name in ("a", "b"):
        path = tmp_path / f"{name}.json"
        path.write_text(path.read_text().replace('"aot_fp8_row"', f'"{default}"'))
    summary = report.render_summary(report.load(runs), cold)
    assert "| 1024x1024 | 170.6-172.8 ms | not measured | 96.0-97.5 ms (1.75-1.80x) |" in summary
    assert "60 s of compile" in summary and "loads the program in 1.1 s" in summary


def test_commands_name_the_committed_file_not_the_machines_path():
    folder = TEST_DIR / "bench-results"  # inside the repository, as committed results are
    folder.mkdir(exist_ok=True)
    path = synthetic_run(folder, "run", 96.0, command="bench_transformer.py --rungs eager --json /root/out/res/run.json")
    text = report.render(report.load([path]))
    assert f"`python -m bench.bench_transformer --rungs eager --json {path.relative_to(ROOT)}`" in text
    assert "/root/out" not in text
    # Recorded as " ".join(argv): an empty argument survives as an empty word, and is quoted again.
    assert report.command("python3 bench/bench_coldstart.py --fp8  --json x", path).startswith(
        "python -m bench.bench_coldstart --fp8 '' --json ")


def test_the_per_size_table_shows_each_rungs_latest_run(tmp_path):
    # Latest by the run's number, not by the shell's glob order (which puts run10 before run9).
    table = report.size_table(report.load([synthetic_run(tmp_path, "run10", 100.0), synthetic_run(tmp_path, "run9", 90.0)]))
    assert "| aot_fp8_row | 100.0 ms (1.50x, error 7.0e-02*) |" in table  # * no inputs recorded: guidance 3.5


def test_speed_ups_are_against_the_eager_run_of_the_same_process():
    rows = report.load(report.TRANSFORMER)
    for row in rows:
        eager = next(r for r in row["run"]["rows"] if r["rung"] == "eager" and r["size"] == row["size"])
        assert row["speedup"] == eager["ms"] / row["ms"]
    assert {"(CD" in r["label"] for r in rows if r["rung"] == "aot_fp8_row"} == {True, False}


def test_rows_are_labelled_with_how_their_inductor_options_differ_from_the_current_ones():
    current = dict(OptimizationConfig().inductor_configs)
    assert report.options_label(current) == ""
    assert report.options_label({**current, "coordinate_descent_check_all_directions": True}) == ""  # no search: no effect
    assert report.options_label({**current, "coordinate_descent_tuning": True}) == " (CD)"
    assert report.options_label(
        {**current, "coordinate_descent_tuning": True, "coordinate_descent_check_all_directions": True}
    ) == " (CD, all directions)"
    assert report.options_label({**current, "epilogue_fusion": True}) == " (epilogue_fusion=True)"
    assert report.options_label({**current, "aot_inductor.compile_wrapper_opt_level": "O1"}) == ""  # host build only
    # A run that did not set an option ran with inductor's default: split reductions before session 7.
    before = {k: v for k, v in current.items() if k != "split_reductions"}
    assert report.options_label(before) == report.options_label({**current, "split_reductions": True}) == " (split reductions)"


def test_seconds_per_image_are_split_and_checked_against_eager(tmp_path):
    """bench_pipeline on CPU with the embedded model (a smoke test, not a timing)."""
    out = tmp_path / "pipeline.json"
    env = {**os.environ, "AOTI_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_pipeline", "--model", "tiny", "--variants", "eager", "aot",
         "--workloads", "512x512x4", "--images", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    eager, aot = json.loads(out.read_text())["rows"]
    for row in (eager, aot):
        parts = row["text_s"] + row["denoise_s"] + row["decode_s"]
        assert 0 < parts <= row["seconds"] and row["other_s"] >= 0 and row["images_per_minute"] == 60 / row["seconds"]
    assert aot["rel_error_vs_eager"] < 1e-4  # float32 on the CPU: the compiled image is eager's


def test_the_benchmark_runs_its_rungs_through_the_project_path(tmp_path):
    """The script behind the committed numbers, on CPU with the embedded model (a smoke test, not a timing)."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_transformer", "--model", "tiny", "--sizes", "256x256", "512x256",
         "--rungs", "eager", "aot_bf16", "--warmup", "0", "--iters", "2", "--profile", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = report.load([out])
    expected = {(rung, size) for rung in ("eager", "aot_bf16") for size in ("256x256", "512x256")}
    assert {(r["rung"], r["size"]) for r in rows} == expected
    for row in rows:
        if row["rung"] == "aot_bf16":
            eager = next(r for r in rows if r["rung"] == "eager" and r["size"] == row["size"])
            assert row["rel_error"] <= 1.5 * eager["rel_error"]  # issue 3's accuracy bound for compiled bf16
            assert row["programs"] == 2 and row["compile_s"] > 0 and row["package_mb"] > 0
            phases = row["compile_phases"]  # where the compile's time went, by inductor stage
            assert phases["torch.export"]["calls"] == phases["AOTInductor compile, total"]["calls"] == 2
            assert 0 < phases["g++ runs"]["s"] < phases["AOTInductor compile, total"]["s"] < row["compile_s"]
    profiled = json.loads(out.read_text())["rows"]
    assert all(r["profile"]["kernels"] > 0 and r["profile"]["top"] for r in profiled)
    assert "| aot_bf16 |" in report.render(rows)


def test_compile_phases_restores_what_it_timed():
    import torch._inductor.graph as graph

    from bench.compile_phases import compile_phases

    run = graph.GraphLowering.run
    with compile_phases() as phases:
        assert graph.GraphLowering.run is not run
    assert graph.GraphLowering.run is run and phases == {}  # stages that never ran are left out


def test_the_benchmark_conditioning_is_exact_in_bf16():
    """The transformer scales timestep and guidance by 1000 in bf16: a value that rounds there shifts the
    conditioning against the fp32 reference, and that shift would dominate every rung's error."""
    from bench import bench_transformer

    for value in (bench_transformer.TIMESTEP, bench_transformer.GUIDANCE):
        assert (torch.tensor(value).bfloat16() * 1000).item() == value * 1000
    assert (torch.tensor(3.5).bfloat16() * 1000).item() != 3500  # FLUX's usual guidance would not be


def test_the_report_marks_errors_of_inputs_that_bf16_rounds():
    for value in (0.5, 1.0, 2.5, 3.5, 4.0, 5.0, 7.5):
        assert report.rounded_in_bf16(value) == ((torch.tensor(value).bfloat16() * 1000).item() != value * 1000), value
        assert report.bf16(value * 1000) == torch.tensor(value * 1000).bfloat16().item()


def test_every_bench_script_imports_without_a_gpu():
    modules = [f"bench.{path.stem}" for path in sorted((ROOT / "bench").glob("*.py"))]
    done = subprocess.run([sys.executable, "-c", f"import {', '.join(modules)}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

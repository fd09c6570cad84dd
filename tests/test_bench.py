"""The published benchmark tables are the committed results, rendered by bench/report.py."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from config import OptimizationConfig
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import report  # noqa: E402

RESULTS = sorted((ROOT / "bench" / "results" / "h200-full").glob("*/*.json"))
COLDSTART = [ROOT / "bench" / "results" / f"coldstart-h200-{name}.json" for name in ("fp8", "bf16", "bf16-session3")]


def test_readme_tables_are_generated_from_the_committed_results():
    readme = (ROOT / "README.md").read_text()
    regenerate = ("python bench/report.py bench/results/h200-full/*/*.json --coldstart bench/results/coldstart-h200-fp8.json "
                  "bench/results/coldstart-h200-bf16.json bench/results/coldstart-h200-bf16-session3.json "
                  "--startup bench/results/startup-cpu.json --readme README.md")
    text = report.render(report.load(RESULTS))
    assert f"{report.BEGIN}\n{text}\n{report.END}" in readme, f"README's benchmark section is stale: {regenerate}"
    coldstart = report.render_coldstart(COLDSTART)
    assert COLDSTART and f"{report.COLDSTART_BEGIN}\n{coldstart}\n{report.COLDSTART_END}" in readme, (
        f"README's cold-start section is stale: {regenerate}"
    )
    startup = report.render_startup(ROOT / "bench" / "results" / "startup-cpu.json")
    stale = f"README's startup section is stale: {regenerate}"
    assert f"{report.STARTUP_BEGIN}\n{startup}\n{report.STARTUP_END}" in readme, stale


def test_the_per_size_table_shows_each_rungs_latest_run(tmp_path):
    def run(name: str, ms: float) -> Path:
        rows = [dict(rung="eager", size="1024x1024", ms=150.0, rel_error=0.07),
                dict(rung="aot_fp8_row", size="1024x1024", ms=ms, rel_error=0.07)]
        env = dict(torch="t", diffusers="d", torchao="a", command=name)
        path = tmp_path / f"{name}.json"
        options = dict(OptimizationConfig().inductor_configs)
        path.write_text(json.dumps(dict(env=env, blocks=[19, 38], inductor_configs=options, rows=rows)))
        return path

    # Latest by the run's number, not by the shell's glob order (which puts run10 before run9).
    table = report.size_table(report.load([run("run10", 100.0), run("run9", 90.0)]))
    assert "| aot_fp8_row | 100.0 ms (1.50x, error 7.0e-02*) |" in table  # * no inputs recorded: guidance 3.5


def test_speed_ups_are_against_the_eager_run_of_the_same_process():
    rows = report.load(RESULTS)
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


def test_the_benchmark_runs_its_rungs_through_the_project_path(tmp_path):
    """The script behind the committed numbers, on CPU with the embedded model (a smoke test, not a timing)."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_transformer.py"), "--model", "tiny", "--sizes", "256x256", "512x256",
         "--rungs", "eager", "aot_bf16", "--warmup", "0", "--iters", "2", "--profile", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
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

    from compile_phases import compile_phases

    run = graph.GraphLowering.run
    with compile_phases() as phases:
        assert graph.GraphLowering.run is not run
    assert graph.GraphLowering.run is run and phases == {}  # stages that never ran are left out


def test_the_benchmark_conditioning_is_exact_in_bf16():
    """The transformer scales timestep and guidance by 1000 in bf16: a value that rounds there shifts the
    conditioning against the fp32 reference, and that shift would dominate every rung's error."""
    import bench_transformer

    for value in (bench_transformer.TIMESTEP, bench_transformer.GUIDANCE):
        assert (torch.tensor(value).bfloat16() * 1000).item() == value * 1000
    assert (torch.tensor(3.5).bfloat16() * 1000).item() != 3500  # FLUX's usual guidance would not be


def test_the_report_marks_errors_of_inputs_that_bf16_rounds():
    for value in (0.5, 1.0, 2.5, 3.5, 4.0, 5.0, 7.5):
        assert report.rounded_in_bf16(value) == ((torch.tensor(value).bfloat16() * 1000).item() != value * 1000), value
        assert report.bf16(value * 1000) == torch.tensor(value * 1000).bfloat16().item()

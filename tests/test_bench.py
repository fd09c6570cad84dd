"""The published benchmark tables are the committed results, rendered by bench/report.py."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import report  # noqa: E402

RESULTS = sorted((ROOT / "bench" / "results" / "h200-x4-full").glob("*/*.json"))


def test_readme_tables_are_generated_from_the_committed_results():
    text = report.render(report.load(RESULTS))
    assert f"{report.BEGIN}\n{text}\n{report.END}" in (ROOT / "README.md").read_text(), (
        "README's benchmark section is stale: python bench/report.py bench/results/h200-x4-full/*/*.json --readme README.md"
    )


def test_speed_ups_are_against_the_eager_run_of_the_same_process():
    rows = report.load(RESULTS)
    for row in rows:
        eager = next(r for r in row["run"]["rows"] if r["rung"] == "eager" and r["size"] == row["size"])
        assert row["speedup"] == eager["ms"] / row["ms"]
    assert {"(no CD)" in r["label"] for r in rows if r["rung"] == "aot_fp8_row"} == {True, False}

"""`python -m bench.report` renders the committed benchmark results (docs/MODEL-PERFORMANCE.md).

Checks that every results file's shape is one the report reads, so a benchmark whose
output changed cannot silently drop its table from the document.
"""

from __future__ import annotations

from bench import report


def test_the_report_renders_a_section_for_each_results_file() -> None:
    text = report.render()
    expected = {
        "model_server.json": "## Model server: MiniLM fp32 on the CPU",
        "gateway_hotpath.json": "### Gateway in front of the MiniLM model server",
        "gateway_hotpath_floor.json": "### Gateway in front of a fixed-answer server",
        "models.json": "## Catalog models at true size",
        "operator_decisions.json": "## Operator decisions",
    }
    for name, heading in expected.items():
        if (report.RESULTS / name).is_file():
            assert heading in text, f"{name} has no section in the report"


def test_the_gateway_hotpath_rows_carry_both_gateways_and_clients() -> None:
    section = report.gateway_hotpath_section()
    if not (report.RESULTS / "gateway_hotpath.json").is_file():
        assert section == ""
        return
    rows = [line for line in section.splitlines() if line.startswith(("| wrk", "| aiohttp"))]
    assert rows, section
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 9
        assert cells[1] in {"this", "baseline"}
        float(cells[4].replace(",", ""))  # the c1 overhead is a number

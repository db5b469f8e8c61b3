"""`make bench` writes its table into README.md between markers, replacing the previous
run's section and leaving the rest of the file as it was."""
from bench import report
from bench.report import Row


def test_readme_section_added_then_replaced(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# pagesync\n\nIntro.\n")
    rows = [Row("(a) ingest", 12000.0, 2000.0, "records/s", floor=">= 5x", ok=True),
            Row("(c) end to end", 40.0, 160.0, "s", higher_is_better=False, ok=True)]
    report.write_readme(readme, report.markdown(rows, "python -m bench.run", ["a note"]))
    first = readme.read_text()
    assert first.startswith("# pagesync\n\nIntro.\n\n## Benchmarks\n")
    assert "| (a) ingest | 12,000 records/s | 2,000 records/s | 6.0x | >= 5x | yes |" in first
    assert "| (c) end to end | 40.0 s | 160 s | 4.0x |" in first
    assert "`python -m bench.run`" in first and "cores" in first and "Python 3." in first

    readme.write_text(first + "\n## After\n\nkept\n")
    rows[0].ours = 3000.0
    report.write_readme(readme, report.markdown(rows, "python -m bench.run", []))
    second = readme.read_text()
    assert second.count(report.START) == 1 and second.count("## Benchmarks") == 1
    assert "| (a) ingest | 3,000 records/s | 2,000 records/s | 1.5x | >= 5x | yes |" in second
    assert "12,000" not in second and second.endswith("## After\n\nkept\n")


def test_paired_rounds_alternate_and_ratio_is_the_median_of_rounds():
    from bench.run import paired
    calls = []
    phases = iter([(10, 2), (30, 3), (20, 10)])  # (a, b) per round: the machine's speed moves
    phase = {}

    def fn_a():
        phase["now"] = next(phases)
        calls.append("a")
        return {"rate": phase["now"][0]}

    def fn_b():
        calls.append("b")
        return {"rate": phase["now"][1]}
    ours, base, ratios = paired(fn_a, fn_b, 3)
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert ours == {"rate": 20} and base == {"rate": 3}
    assert ratios == {"rate": 5.0}  # the rounds' 5x, 10x and 2x: not 20 / 3
    row = Row("(a) ingest", ours["rate"], base["rate"], "records/s", paired_ratio=ratios["rate"])
    assert report.cells(row)[3] == "5.0x"

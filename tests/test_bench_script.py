"""Tests for the doc and plot output of scripts/bench.py, without running any benchmark."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from script_modules import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench.py")


def section(bench: ModuleType, body: str) -> str:
    return f"{bench.START_MARKER}\n{body}\n{bench.END_MARKER}\n"


def test_write_section_appends_markers(bench: ModuleType, tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nolder text\n", encoding="utf-8")

    bench.write_section(doc, section(bench, "first run"))

    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\nolder text\n\n")
    assert text.endswith(section(bench, "first run"))


def test_write_section_replaces_only_section(bench: ModuleType, tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n" + section(bench, "first run") + "\n## Later section\n", encoding="utf-8")

    bench.write_section(doc, section(bench, "second run"))

    text = doc.read_text(encoding="utf-8")
    assert "first run" not in text
    assert text.count(bench.START_MARKER) == 1
    assert text.count(bench.END_MARKER) == 1
    assert text == "# Benchmarks\n\n" + section(bench, "second run") + "\n## Later section\n"


def test_plot_throughput_writes_png(bench: ModuleType, tmp_path: Path) -> None:
    rows = [
        bench.BuildRow("maskid default", 10, reference_s=2.0, maskid_s=1.0),
        bench.BuildRow("maskid, no synthetic masks, no flip", 10, reference_s=2.0, maskid_s=0.5),
    ]
    path = tmp_path / "img" / "throughput.png"

    bench.plot_throughput(rows, path)

    assert path.read_bytes().startswith(b"\x89PNG")


def test_build_table_ratio(bench: ModuleType) -> None:
    rows = [bench.BuildRow("maskid default", 10, reference_s=2.0, maskid_s=0.8)]

    table = bench.build_table(rows)

    assert table[-1] == "| maskid default | 5.00 | 12.50 | **2.50x** |"

"""Report pages: one self-contained HTML file and a markdown twin, from text and plots."""

from __future__ import annotations

import base64

from harness.analysis import page

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def test_html_embeds_plots_and_escapes_text_markdown_links_them(tmp_path) -> None:
    plot = tmp_path / "delay_cdf.png"
    plot.write_bytes(PNG)
    table = "strategy  491\n<inline>    9"
    html_path, md_path = page.write(
        tmp_path, "report", "a & b", [page.Section("table", table, (plot,))],
        ["deferbench", "run", "--load", "reinvite:rate=5/s"], "built-in",
    )  # fmt: skip
    html = html_path.read_text()
    assert "data:image/png;base64," + base64.b64encode(PNG).decode() in html
    assert "&lt;inline&gt;" in html and "<inline>" not in html
    assert "deferbench run --load reinvite:rate=5/s" in html and "built-in" in html
    md = md_path.read_text()
    assert md.startswith("# a & b\n")
    assert "```\n" + table + "\n```" in md
    assert "![delay cdf](delay_cdf.png)" in md


def test_a_missing_plot_is_left_out_not_an_error(tmp_path) -> None:
    section = page.Section("s", "x", (tmp_path / "none.png",))
    html_path, md_path = page.write(tmp_path, "p", "t", [section], ["deferbench"])
    assert "<img" not in html_path.read_text() and "![" not in md_path.read_text()

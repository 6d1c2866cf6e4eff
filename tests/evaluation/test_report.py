"""marco_jax.evaluation.report: the files it writes are complete, valid and self-contained."""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from marco_jax.evaluation import metrics, paper_results, report, report_sections
from marco_jax.evaluation.per_image import GalleryImage


def _random_eval(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, softmax probabilities that mostly agree with them, and three data sources."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4)) + 2.0 * np.eye(4)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    sources = rng.choice(["bms", "csiro", "merck"], n)
    return labels, probs, sources


def _strict_json(text: str):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


def test_write_report_with_sources(tmp_path):
    labels, probs, sources = _random_eval(0)
    # A source missing a class must not break the spread plot or tables.
    sources[(sources == "merck") & (labels == 3)] = "bms"
    computed = metrics.compute_all(labels, probs, sources=sources)
    out = tmp_path / "eval"
    paths = report.write_report(out, computed, run_info={"checkpoint": "best", "step": 42})

    assert set(paths) == {
        "json",
        "html",
        "confusion_matrix",
        "roc",
        "precision_recall",
        "source_spread",
    }
    assert all(path.parent == out and path.is_file() for path in paths.values())

    loaded = _strict_json(paths["json"].read_text())
    assert loaded.pop("run_info") == {"checkpoint": "best", "step": 42}
    assert loaded == metrics.compute_all(labels, probs, sources=sources)

    pngs = {
        name: paths[name]
        for name in ("confusion_matrix", "roc", "precision_recall", "source_spread")
    }
    for path in pngs.values():
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"
            assert min(image.size) > 200

    page = paths["html"].read_text(encoding="utf-8")
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(base64.b64decode(data) for data in embedded) == sorted(
        path.read_bytes() for path in pngs.values()
    )
    # Self-contained: every src/href is a data URI; no path of the output folder leaks in.
    assert re.findall(r'(?:src|href)="(?!data:)', page) == []
    assert "http" not in page.replace(" ", "")
    assert str(tmp_path) not in page and ".png" not in page
    # The numbers a user compares with the paper are there.
    assert paper_results.PAPER_LABEL in page
    assert f"{100 * computed['accuracy']:.1f} %" in page
    low, high = computed["accuracy_interval"]
    assert f"{100 * low:.1f}–{100 * high:.1f} %" in page
    assert "Wilson" in page
    assert "0.988" in page  # Fig 3, crystals AUC in the paper
    assert "Table 5" in page and "merck" in page
    # Tables 4 and 5 in the paper's layout: one cell per class pair, this run over the paper.
    matrices = re.findall(r'<table class="matrix">.*?</table>', page)
    assert len(matrices) == 2
    cells = re.findall(r"<td class=\"(diag|off)\">(.*?)</td>", matrices[0])
    assert len(cells) == 16 and [kind for kind, _ in cells[::5]] == ["diag"] * 4
    crystals_recall = computed["confusion_matrix_normalized"][0][0]
    assert cells[0][1] == (
        f'<span class="run">{100 * crystals_recall:.1f} %</span><br><small>paper 91.0 %</small>'
    )
    # The crystals threshold sweep, a row per threshold.
    for row in computed["precision_recall"]["thresholds"]:
        assert f"<tr><td>{row['threshold']:g}</td><td>{row['tp'] + row['fp']}</td>" in page


def test_write_report_without_sources_and_html_escaping(tmp_path):
    labels, probs, _ = _random_eval(1, n=120)
    names = ("crystals", "<b>precipitate</b>", "clear & co", "other")
    computed = metrics.compute_all(labels, probs, class_names=names)
    paths = report.write_report(tmp_path, computed, title="run <script>alert(1)</script>")

    assert "source_spread" not in paths
    assert not (tmp_path / "source_spread.png").exists()
    assert _strict_json(paths["json"].read_text()) == computed

    page = paths["html"].read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>precipitate" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;precipitate&lt;/b&gt;" in page and "clear &amp; co" in page
    assert "Table 5 is the spread" in page and "records no data source" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 3


def test_report_survives_undefined_numbers(tmp_path):
    # No "other" examples: its recall, interval and AUC are undefined.
    labels, probs, sources = _random_eval(2, n=200)
    keep = labels != 3
    computed = metrics.compute_all(labels[keep], probs[keep], sources=sources[keep])
    paths = report.write_report(tmp_path, computed)
    page = paths["html"].read_text(encoding="utf-8")
    assert "<td>other</td><td>0</td><td>n/a</td><td>n/a</td>" in page  # examples, recall, CI
    for name in ("roc", "precision_recall", "source_spread"):
        with Image.open(paths[name]) as image:
            image.verify()


def test_a_single_source_gets_no_table_5(tmp_path):
    """Table 5 is a spread across sources: with one there is nothing to show, so no table of
    n/a and no empty heat map, but one line saying why."""
    labels, probs, _ = _random_eval(4, n=100)
    computed = metrics.compute_all(labels, probs, sources=["bms"] * 100)
    assert computed["sources"]["names"] == ["bms"]  # report.json keeps the per-source numbers
    paths = report.write_report(tmp_path, computed)
    assert "source_spread" not in paths and not (tmp_path / "source_spread.png").exists()
    page = paths["html"].read_text(encoding="utf-8")
    assert "every image of this split comes from one source (bms)" in page
    assert page.count('<table class="matrix">') == 1  # Table 4 only
    assert "std of the row-normalised cell" not in page and "Per source" not in page


def test_gallery_of_mistakes(tmp_path):
    labels, probs, _ = _random_eval(5, n=60)
    computed = metrics.compute_all(labels, probs)
    jpeg = io.BytesIO()
    Image.new("RGB", (12, 10), (200, 30, 30)).save(jpeg, format="JPEG")
    gallery = [
        GalleryImage("clear", "crystals", 0.91, 0.05, "plate<1>/A1.jpg", "bms", jpeg.getvalue()),
        GalleryImage("clear", "crystals", 0.80, 0.10, "plate1/B2.jpg", "bms", jpeg.getvalue()),
        GalleryImage("other", "clear", 0.70, 0.20, "plate2/C3.jpg", "csiro", jpeg.getvalue()),
    ]
    page = report.write_report(tmp_path, computed, gallery=gallery)["html"].read_text()
    section = page[page.index("Most confident mistakes") :]
    clear_as_crystals = computed["confusion_matrix"][2][0]
    assert f"label clear → predicted crystals (2 of {clear_as_crystals})" in section
    assert "label other → predicted clear (1 of" in section
    thumbnails = re.findall(
        r'<img class="thumb" tabindex="0" alt="([^"]*)" src="data:image/jpeg;base64,', page
    )
    assert thumbnails == ["plate&lt;1&gt;/A1.jpg", "plate1/B2.jpg", "plate2/C3.jpg"]
    assert "p_crystals 0.910</b>, p_clear 0.050" in section
    # Without mistakes to show: one line.
    assert "<p>No mistakes.</p>" in report_sections.gallery_section(computed, [])


def test_write_report_rejects_non_json_metrics(tmp_path):
    labels, probs, _ = _random_eval(3, n=50)
    computed = metrics.compute_all(labels, probs)
    computed["accuracy"] = float("nan")  # compute_all never does this; a hand-edited dict might
    with pytest.raises(ValueError, match="JSON"):
        report.write_report(tmp_path, computed)

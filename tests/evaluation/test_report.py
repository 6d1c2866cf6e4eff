"""marco_jax.evaluation.report: the files it writes are complete, valid and self-contained."""

import base64
import json
import re

import numpy as np
import pytest
from PIL import Image

from marco_jax.evaluation import metrics, report


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

    assert set(paths) == {"json", "html", "confusion_matrix", "roc", "source_spread"}
    assert all(path.parent == out and path.is_file() for path in paths.values())

    loaded = _strict_json(paths["json"].read_text())
    assert loaded.pop("run_info") == {"checkpoint": "best", "step": 42}
    assert loaded == metrics.compute_all(labels, probs, sources=sources)

    pngs = {name: paths[name] for name in ("confusion_matrix", "roc", "source_spread")}
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
    assert report.PAPER_LABEL in page
    assert f"{100 * computed['accuracy']:.1f} %" in page
    assert "91.0 %" in page  # Table 4, crystals recall in the paper
    assert "0.988" in page  # Fig 3, crystals AUC in the paper
    assert "Table 5" in page and "merck" in page


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
    assert "Table 5" not in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2


@pytest.mark.parametrize("one_source", [False, True])
def test_report_survives_undefined_numbers(tmp_path, one_source):
    # No "other" examples: its recall and AUC are undefined; with a single source every
    # Table-5 cell is undefined too.
    labels, probs, sources = _random_eval(2, n=200)
    keep = labels != 3
    if one_source:
        sources[:] = "bms"
    computed = metrics.compute_all(labels[keep], probs[keep], sources=sources[keep])
    paths = report.write_report(tmp_path, computed)
    page = paths["html"].read_text(encoding="utf-8")
    assert "<td>other</td><td>0</td><td>n/a</td>" in page  # examples, recall
    for name in ("roc", "source_spread"):
        with Image.open(paths[name]) as image:
            image.verify()


def test_write_report_rejects_non_json_metrics(tmp_path):
    labels, probs, _ = _random_eval(3, n=50)
    computed = metrics.compute_all(labels, probs)
    computed["accuracy"] = float("nan")  # compute_all never does this; a hand-edited dict might
    with pytest.raises(ValueError, match="JSON"):
        report.write_report(tmp_path, computed)

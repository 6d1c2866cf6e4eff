"""The relabeling workflow (paper section 2): the ranked candidates and their contact sheet from a
trained workdir, and the expert's corrections reaching the next build of the dataset."""

import base64
import csv
import io
import json
import math
import pathlib
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from marco_jax import cli
from marco_jax.data import input_pipeline, preprocess
from marco_jax.evaluation import relabel
from marco_jax.labels import CLASS_NAMES
from marco_jax.runs import store
from tfds_marco.marco import build
from tfds_marco.marco.marco_dataset_builder import Builder

DUMMY_FOLDERS = Builder.code_path.parent / "dummy_data" / "folders"
NUM_IMAGES = 16 + 8  # synthetic_tiny: train + test


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _candidate(split: str, filename: str, label: int, p_label: float) -> relabel.Candidate:
    rest = (1.0 - p_label) / 3
    probs = tuple(p_label if c == label else rest for c in range(len(CLASS_NAMES)))
    return relabel.Candidate(split, 0, filename, "s", "x", label, probs)


def test_select_takes_the_top_fraction_over_all_splits():
    pool = [
        _candidate("train", "a.jpg", 0, 0.9),
        _candidate("test", "b.jpg", 1, 0.1),  # disagreement 0.9
        _candidate("train", "c.jpg", 2, 0.5),
        _candidate("train", "d.jpg", 3, 0.3),  # 0.7, tied with e and f
        _candidate("test", "f.jpg", 0, 0.3),
        _candidate("test", "e.jpg", 0, 0.3),
        _candidate("train", "g.jpg", 1, 0.95),
    ]
    assert [c.disagreement for c in pool[:2]] == pytest.approx([0.1, 0.9])
    # ceil(0.4 * 7) = 3: b, then the ties of 0.7 by split and filename.
    assert [c.filename for c in relabel.select(pool, 0.4)] == ["b.jpg", "e.jpg", "f.jpg"]
    assert [c.filename for c in relabel.select(pool, 0.01)] == ["b.jpg"]
    assert len(relabel.select(pool, 1.0)) == 7


def test_candidates_csv_and_contact_sheet(trained_workdir, tmp_path):
    result = relabel.find_candidates(
        str(trained_workdir),
        fraction=0.3,
        out=str(tmp_path / "top"),
        checkpoint="latest",
        page_size=5,
        thumbnail_size=48,
    )
    rows = _rows(result["csv"])
    config = store.read_config(str(trained_workdir))
    splits = {s: input_pipeline.open_tfds_source(config, s) for s in ("train", "test")}
    assert result["num_scored"] == NUM_IMAGES  # train and test ranked together
    assert len(rows) == math.ceil(0.3 * NUM_IMAGES) == 8
    assert list(rows[0]) == list(relabel.CANDIDATE_COLUMNS)
    disagreement = [float(r["disagreement"]) for r in rows]
    assert disagreement == sorted(disagreement, reverse=True)
    for row, candidate in zip(rows, result["candidates"], strict=True):
        assert (row["split"], row["filename"]) == (candidate.split, candidate.filename)
        record = splits[row["split"]][candidate.index]  # the dataset's own record
        assert record["filename"].decode() == row["filename"]
        assert row["label"] == CLASS_NAMES[record["label"]]
        assert float(row["p_label"]) == pytest.approx(candidate.probs[candidate.label], abs=1e-6)
        assert float(row["disagreement"]) == pytest.approx(1 - float(row["p_label"]), abs=2e-6)
        assert row["predicted"] == CLASS_NAMES[int(np.argmax(candidate.probs))]
        assert float(row["p_pred"]) == pytest.approx(max(candidate.probs), abs=1e-6)
        assert row["source"] == "synthetic" and row["corrected_label"] == ""

    # Contact sheet: 8 images, 5 a page, each thumbnail embedded, pages linked.
    assert [p.rsplit("/", 1)[-1] for p in result["html"]] == [
        "relabel_candidates.html",
        "relabel_candidates_2.html",
    ]
    pages = [pathlib.Path(p).read_text(encoding="utf-8") for p in result["html"]]
    thumbnails = [
        re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', page) for page in pages
    ]
    assert [len(t) for t in thumbnails] == [5, 3]
    for row in rows[:5]:
        assert row["filename"] in pages[0]
    for row in rows[5:]:
        assert row["filename"] in pages[1]
    assert 'href="relabel_candidates_2.html"' in pages[0]
    assert 'href="relabel_candidates.html"' in pages[1]
    with Image.open(io.BytesIO(base64.b64decode(thumbnails[0][0]))) as thumbnail:
        assert thumbnail.format == "JPEG" and thumbnail.size == (48, 48)  # from 64 px squares
        shown = np.asarray(thumbnail.convert("RGB"), float)
    first = splits[rows[0]["split"]][result["candidates"][0].index]  # the top candidate's photo
    original = Image.fromarray(preprocess.decode_image(first["image"])).resize((48, 48))
    assert np.abs(shown - np.asarray(original, float)).mean() < 8


def test_corrections_reach_the_next_build(trained_workdir, tmp_path):
    """Rank a folder-per-label dataset, fill in corrections, export, rebuild with them."""
    manual = tmp_path / "manual"
    shutil.copytree(DUMMY_FOLDERS, manual)
    workdir = tmp_path / "workdir"  # the trained run, pointed at the `full` dataset
    shutil.copytree(trained_workdir, workdir, ignore=shutil.ignore_patterns("report_*"))
    config = json.loads((workdir / "config.json").read_text())
    config["dataset"].update(
        config_name="full", manual_dir=str(manual), data_dir=str(tmp_path / "data")
    )
    (workdir / "config.json").write_text(json.dumps(config))

    result = relabel.find_candidates(str(workdir), fraction=1.0, checkpoint="latest")
    rows = _rows(result["csv"])
    assert sorted(r["filename"] for r in rows) == [
        "test/crystals/e.jpg",
        "test/precipitate/f.jpg",
        "train/Heavy_Precipitate/b.jpg",
        "train/clear/c.png",
        "train/crystals/a.jpg",
        "train/other/d.png",
    ]
    by_name = {r["filename"]: r for r in rows}
    assert by_name["train/Heavy_Precipitate/b.jpg"]["original_label"] == "Heavy_Precipitate"
    by_name["train/crystals/a.jpg"]["corrected_label"] = " Other "  # case and blanks ignored
    by_name["test/precipitate/f.jpg"]["corrected_label"] = "precipitate"  # confirmed as it is
    edited = tmp_path / "reviewed.csv"
    _write_rows(edited, rows)

    corrected = manual / "corrected_labels.csv"
    assert relabel.export_corrections(str(edited), str(corrected)) == 2
    assert corrected.read_text() == (
        "filename,label\ntest/precipitate/f.jpg,precipitate\ntrain/crystals/a.jpg,other\n"
    )
    rebuilt = build("full", data_dir=str(tmp_path / "rebuilt"), manual_dir=str(manual))
    labels = {
        ex["filename"].decode(): CLASS_NAMES[ex["label"]]
        for split in rebuilt.info.splits
        for ex in rebuilt.as_data_source(split=split)
    }
    assert labels == {
        "train/crystals/a.jpg": "other",  # corrected
        "train/Heavy_Precipitate/b.jpg": "precipitate",
        "train/clear/c.png": "clear",
        "train/other/d.png": "other",
        "test/crystals/e.jpg": "crystals",
        "test/precipitate/f.jpg": "precipitate",
    }


def test_export_merges_rounds_and_refuses_bad_labels(tmp_path):
    candidates = tmp_path / "candidates.csv"
    header = ",".join(relabel.CANDIDATE_COLUMNS)

    def write(*lines: str) -> None:
        candidates.write_text("\n".join([header, *lines]) + "\n")

    out = tmp_path / "corrected_labels.csv"
    out.write_text("filename,label\nold/x.jpg,Clear\nold/y.jpg,crystals\n")  # an earlier round
    write(
        "train,old/y.jpg,s,crystals,c,other,0.1,0.8,0.9,other",
        "test,new/z.jpg,s,clear,c,other,0.2,0.7,0.8,",
    )
    assert relabel.export_corrections(str(candidates), str(out)) == 1
    assert out.read_text() == "filename,label\nold/x.jpg,Clear\nold/y.jpg,other\n"

    write("train,a.jpg,s,crystals,c,other,0.1,0.8,0.9,maybe crystals")
    with pytest.raises(cli.ArgumentError, match=r"candidates.csv:2: .*'maybe crystals' is not"):
        relabel.export_corrections(str(candidates), str(tmp_path / "o.csv"))
    write(
        "train,a.jpg,s,crystals,c,other,0.1,0.8,0.9,clear",
        "train,a.jpg,s,crystals,c,other,0.1,0.8,0.9,other",
    )
    with pytest.raises(cli.ArgumentError, match="a.jpg is corrected to both 'clear' and 'other'"):
        relabel.export_corrections(str(candidates), str(tmp_path / "o.csv"))
    candidates.write_text("filename,label\na.jpg,clear\n")
    with pytest.raises(cli.ArgumentError, match=r"no column \['corrected_label'\]"):
        relabel.export_corrections(str(candidates), str(tmp_path / "o.csv"))
    assert not (tmp_path / "o.csv").exists()


def test_bad_arguments_are_named(trained_workdir):
    with pytest.raises(cli.ArgumentError, match=r"fraction must lie in \(0, 1\], got 0"):
        relabel.find_candidates(str(trained_workdir), fraction=0)
    with pytest.raises(cli.ArgumentError, match="Unknown split 'val'"):
        relabel.find_candidates(str(trained_workdir), splits=["train", "val"])

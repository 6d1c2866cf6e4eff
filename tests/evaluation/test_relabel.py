"""The relabeling workflow (paper section 2): the ranked candidates and their labelling page from a
trained workdir, the page labelling in a real browser (headless Chromium under Selenium), and the
expert's corrections reaching the next build of the dataset."""

import csv
import json
import math
import pathlib
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

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


def _page_data(page: pathlib.Path) -> dict:
    """The candidates the labelling page carries, from its JSON block."""
    text = page.read_text(encoding="utf-8")
    block = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    return json.loads(block.group(1))


def test_candidates_csv_and_labelling_page(trained_workdir, tmp_path):
    result = relabel.find_candidates(
        str(trained_workdir),
        fraction=0.3,
        out=str(tmp_path / "top"),
        checkpoint="latest",
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

    # The page: one file, the candidates in rank order, each linked to its photograph as stored
    # (full size) and to a thumbnail, both relative to the page so the folder opens anywhere.
    page = pathlib.Path(result["html"])
    assert page == tmp_path / "top" / relabel.PAGE_HTML
    data = _page_data(page)
    assert data["classes"] == list(CLASS_NAMES)
    assert [(i["split"], i["filename"]) for i in data["items"]] == [
        (r["split"], r["filename"]) for r in rows
    ]
    text = page.read_text(encoding="utf-8")
    assert "http" not in text.replace(" ", "") and str(tmp_path) not in text
    assert "<script src" not in text and "<link" not in text  # JS and CSS inlined
    for item, row, candidate in zip(data["items"], rows, result["candidates"], strict=True):
        assert (item["label"], item["predicted"]) == (row["label"], row["predicted"])
        assert item["probs"] == pytest.approx(candidate.probs, abs=1e-6)
        record = splits[candidate.split][candidate.index]
        assert (page.parent / item["image"]).read_bytes() == record["image"]
        with Image.open(page.parent / item["thumb"]) as thumbnail:
            assert thumbnail.format == "JPEG" and thumbnail.size == (48, 48)  # of 64 px squares
            shown = np.asarray(thumbnail.convert("RGB"), float)
        original = Image.fromarray(preprocess.decode_image(record["image"])).resize((48, 48))
        assert np.abs(shown - np.asarray(original, float)).mean() < 8


@pytest.fixture(scope="module")
def ranked_folders(trained_workdir, tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """The trained run pointed at a `full` build of the dummy folder-per-label dataset, every
    image ranked (fraction 1) with 16 px thumbnails; (manual folder, find_candidates' result).
    Tests copy the manual folder before adding corrections to it."""
    root = tmp_path_factory.mktemp("ranked_folders")
    manual = root / "manual"
    shutil.copytree(DUMMY_FOLDERS, manual)
    workdir = root / "workdir"
    shutil.copytree(trained_workdir, workdir, ignore=shutil.ignore_patterns("report_*"))
    config = json.loads((workdir / "config.json").read_text())
    config["dataset"].update(config_name="full", manual_dir=str(manual), data_dir=str(root / "d"))
    (workdir / "config.json").write_text(json.dumps(config))
    result = relabel.find_candidates(
        str(workdir), fraction=1.0, checkpoint="latest", thumbnail_size=16
    )
    return manual, result


def rebuilt_labels(manual: pathlib.Path, corrections: str, data_dir: pathlib.Path) -> dict:
    """{filename: class} of a `full` build of a copy of `manual` with `corrections` as its
    corrected_labels.csv."""
    copy = data_dir.parent / "manual_corrected"
    shutil.copytree(manual, copy)
    (copy / "corrected_labels.csv").write_text(corrections)
    rebuilt = build("full", data_dir=str(data_dir), manual_dir=str(copy))
    return {
        ex["filename"].decode(): CLASS_NAMES[ex["label"]]
        for split in rebuilt.info.splits
        for ex in rebuilt.as_data_source(split=split)
    }


ORIGINAL_LABELS = {
    "train/crystals/a.jpg": "crystals",
    "train/Heavy_Precipitate/b.jpg": "precipitate",
    "train/clear/c.png": "clear",
    "train/other/d.png": "other",
    "test/crystals/e.jpg": "crystals",
    "test/precipitate/f.jpg": "precipitate",
}


def test_corrections_reach_the_next_build(ranked_folders, tmp_path):
    """Fill in corrections in the candidates CSV, export, rebuild with them."""
    manual, result = ranked_folders
    rows = _rows(result["csv"])
    assert sorted(r["filename"] for r in rows) == sorted(ORIGINAL_LABELS)
    by_name = {r["filename"]: r for r in rows}
    assert by_name["train/Heavy_Precipitate/b.jpg"]["original_label"] == "Heavy_Precipitate"
    by_name["train/crystals/a.jpg"]["corrected_label"] = " Other "  # case and blanks ignored
    by_name["test/precipitate/f.jpg"]["corrected_label"] = "precipitate"  # confirmed as it is
    edited = tmp_path / "reviewed.csv"
    _write_rows(edited, rows)

    corrected = tmp_path / "corrected_labels.csv"
    assert relabel.export_corrections(str(edited), str(corrected)) == 2
    assert corrected.read_text() == (
        "filename,label\ntest/precipitate/f.jpg,precipitate\ntrain/crystals/a.jpg,other\n"
    )
    labels = rebuilt_labels(manual, corrected.read_text(), tmp_path / "rebuilt")
    assert labels == ORIGINAL_LABELS | {"train/crystals/a.jpg": "other"}


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
    candidates.write_text("filename,verdict\na.jpg,clear\n")
    with pytest.raises(cli.ArgumentError, match=r"no column \['corrected_label'\]"):
        relabel.export_corrections(str(candidates), str(tmp_path / "o.csv"))
    assert not (tmp_path / "o.csv").exists()
    # The labelling page saves the builder's own `filename,label`: merged as another round.
    saved = tmp_path / "saved.csv"
    saved.write_text('filename,label\nold/x.jpg,other\n"new/a, b.jpg",crystals\n')
    assert relabel.export_corrections(str(saved), str(out)) == 2
    assert out.read_text() == (
        'filename,label\n"new/a, b.jpg",crystals\nold/x.jpg,other\nold/y.jpg,other\n'
    )
    saved.write_text("filename,label\nz.jpg,crystal\n")
    with pytest.raises(cli.ArgumentError, match=r"saved.csv:2: label 'crystal' is not one of"):
        relabel.export_corrections(str(saved), str(out))


def test_bad_arguments_are_named(trained_workdir):
    with pytest.raises(cli.ArgumentError, match=r"fraction must lie in \(0, 1\], got 0"):
        relabel.find_candidates(str(trained_workdir), fraction=0)
    with pytest.raises(cli.ArgumentError, match="Unknown split 'val'"):
        relabel.find_candidates(str(trained_workdir), splits=["train", "val"])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
)


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """Headless Chromium under Selenium, downloading into tmp_path/downloads without asking."""
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download a driver
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(options=options, service=ChromeService(CHROMEDRIVER))
    try:
        yield driver, downloads
    finally:
        driver.quit()


def _press(driver, keys: str) -> None:
    ActionChains(driver).send_keys(keys).perform()


def _cards(driver) -> list[str]:
    return [
        c.get_attribute("data-filename") for c in driver.find_elements(By.CSS_SELECTOR, ".card")
    ]


# Decided at collection, so that no fixture (a trained model, a ranking) is built for nothing.
@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Chromium and its driver: apt-get install chromium chromium-driver "
    "(.ci/run installs them)",
)
def test_labelling_page_in_a_browser(ranked_folders, browser, tmp_path):
    """Filter, view full size, label three images by keys and a click, save, rebuild."""
    manual, result = ranked_folders
    driver, downloads = browser
    page = pathlib.Path(result["html"])
    items = _page_data(page)["items"]
    driver.get(page.as_uri())
    wait = WebDriverWait(driver, 20)
    assert _cards(driver) == [item["filename"] for item in items]

    # The filter by confusion pair shows exactly that pair's candidates.
    pair = (items[0]["label"], items[0]["predicted"])
    Select(driver.find_element(By.ID, "filter")).select_by_value("pair:{}|{}".format(*pair))
    assert _cards(driver) == [
        item["filename"] for item in items if (item["label"], item["predicted"]) == pair
    ]
    Select(driver.find_element(By.ID, "filter")).select_by_value("all")

    def another_class(item: dict) -> str:
        return CLASS_NAMES[(CLASS_NAMES.index(item["label"]) + 1) % len(CLASS_NAMES)]

    first, second, fourth = items[0], items[1], items[3]
    # 1. Click the first picture: the viewer shows the photograph at full size (32 px), not
    # its 16 px thumbnail; a key labels it and moves on to the second.
    thumbnail = driver.find_element(By.CSS_SELECTOR, ".card img.thumb")
    loaded_width = "return arguments[0].complete && arguments[0].naturalWidth"
    assert wait.until(lambda d: d.execute_script(loaded_width, thumbnail)) == 16
    thumbnail.click()
    full_width = "var i = document.getElementById('full'); return i.complete && i.naturalWidth"
    assert wait.until(lambda d: d.execute_script(full_width)) == 32
    assert driver.find_element(By.ID, "viewer").is_displayed()
    _press(driver, str(CLASS_NAMES.index(another_class(first)) + 1))
    assert first["filename"] not in driver.find_element(By.ID, "viewer-name").text
    assert second["filename"] in driver.find_element(By.ID, "viewer-name").text
    _press(driver, Keys.ESCAPE)
    assert not driver.find_element(By.ID, "viewer").is_displayed()
    # 2. The second is selected now: label it by key in the grid.
    _press(driver, str(CLASS_NAMES.index(another_class(second)) + 1))
    # 3. The fourth by a click on its class button.
    card = driver.find_element(By.CSS_SELECTOR, '.card[data-index="3"]')
    card.find_element(By.CSS_SELECTOR, f'button[data-label="{another_class(fourth)}"]').click()
    changed = [
        c.get_attribute("data-filename")
        for c in driver.find_elements(By.CSS_SELECTOR, ".card.changed")
    ]
    assert changed == [first["filename"], second["filename"], fourth["filename"]]
    assert "3 of 6 labelled, 3 relabelled" in driver.find_element(By.ID, "counts").text

    driver.find_element(By.ID, "save").click()
    saved = downloads / "corrected_labels.csv"
    wait.until(lambda _: saved.exists() and not list(downloads.glob("*.crdownload")))
    expected = {item["filename"]: another_class(item) for item in (first, second, fourth)}
    assert saved.read_text() == "filename,label\n" + "".join(
        f"{name},{label}\n" for name, label in sorted(expected.items())
    )
    # The builder takes the saved file as it is.
    labels = rebuilt_labels(manual, saved.read_text(), tmp_path / "rebuilt")
    assert labels == ORIGINAL_LABELS | expected
    assert all(ORIGINAL_LABELS[name] != label for name, label in expected.items())

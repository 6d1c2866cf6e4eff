"""marco_jax.evaluation.per_image: the mistakes the gallery shows, chosen by hand, and
predictions.csv read back."""

import csv
import io

import numpy as np
from PIL import Image

from marco_jax.evaluation import evaluator, per_image
from marco_jax.labels import CLASS_NAMES

# Labels and argmax: 0->0, 0->1 (p .5), 0->1 (p .8), 2->0 (p .6), 0->1 (p .8), 3->1 (p .45),
# 2->0 (p .9), 1->1.
LABELS = np.array([0, 0, 0, 2, 0, 3, 2, 1])
PROBS = np.array(
    [
        [0.7, 0.1, 0.1, 0.1],
        [0.3, 0.5, 0.1, 0.1],
        [0.1, 0.8, 0.05, 0.05],
        [0.6, 0.1, 0.2, 0.1],
        [0.1, 0.8, 0.0, 0.1],
        [0.25, 0.45, 0.1, 0.2],
        [0.9, 0.0, 0.1, 0.0],
        [0.1, 0.8, 0.05, 0.05],
    ]
)


def test_confident_mistakes_by_hand():
    # crystals -> precipitate: 2 and 4 tie at .8 (lower index first), then 1 at .5;
    # clear -> crystals: 6 (.9) before 3 (.6); other -> precipitate: 5.
    assert per_image.confident_mistakes(LABELS, PROBS, per_pair=5) == {
        (0, 1): [2, 4, 1],
        (2, 0): [6, 3],
        (3, 1): [5],
    }
    assert per_image.confident_mistakes(LABELS, PROBS, per_pair=1) == {
        (0, 1): [2],
        (2, 0): [6],
        (3, 1): [5],
    }
    assert per_image.confident_mistakes(LABELS[[0, 7]], PROBS[[0, 7]], per_pair=3) == {}


def _predictions() -> evaluator.Predictions:
    names = [f"plate/{i}.png" for i in range(8)]
    names[1] = 'odd, "name".png'
    texts = {"filename": np.array(names), "source": np.array(["s"] * 8)}
    return evaluator.Predictions(PROBS.astype(np.float32), LABELS, texts)


def test_gallery_thumbnails_of_the_chosen_records():
    records = []
    for i in range(8):
        encoded = io.BytesIO()
        Image.new("RGB", (40, 20), (30 * i, 0, 0)).save(encoded, format="PNG")
        records.append({"image": encoded.getvalue()})
    gallery = per_image.gallery(_predictions(), records, CLASS_NAMES, per_pair=1, size=10)
    assert [(g.label, g.predicted, g.filename) for g in gallery] == [
        ("crystals", "precipitate", "plate/2.png"),
        ("clear", "crystals", "plate/6.png"),
        ("other", "precipitate", "plate/5.png"),
    ]
    assert gallery[1].p_predicted == np.float32(0.9) and gallery[1].p_label == np.float32(0.1)
    with Image.open(io.BytesIO(gallery[1].jpeg)) as thumbnail:
        assert thumbnail.format == "JPEG" and thumbnail.size == (10, 5)
        red = np.asarray(thumbnail)[..., 0].mean()
    assert abs(red - 30 * 6) < 6  # record 6's picture


def test_predictions_csv(tmp_path):
    path = tmp_path / "predictions.csv"
    per_image.write_predictions_csv(path, _predictions(), CLASS_NAMES)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "filename",
        "source",
        "label",
        "predicted",
        "p_crystals",
        "p_precipitate",
        "p_clear",
        "p_other",
    ]
    assert len(rows) == 8
    assert rows[1]["filename"] == 'odd, "name".png'  # quoted, read back whole
    assert (rows[3]["label"], rows[3]["predicted"]) == ("clear", "crystals")
    read_back = np.array([[float(r[f"p_{n}"]) for n in CLASS_NAMES] for r in rows])
    np.testing.assert_allclose(read_back, PROBS, atol=1e-6)

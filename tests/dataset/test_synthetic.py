"""The procedural drop renderer: reproducible, class-dependent, and not solvable by colour."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from marco_jax.labels import CLASS_NAMES, NUM_CLASSES
from tfds_marco.marco import synthetic


def test_same_seed_gives_identical_bytes_and_other_seeds_do_not():
    a = synthetic.render_drop(seed=7, label=0, size=96)
    b = synthetic.render_drop(seed=7, label=0, size=96)
    assert a.dtype == np.uint8 and a.shape == (96, 96, 3)
    assert a.tobytes() == b.tobytes()
    assert synthetic.render_drop(seed=8, label=0, size=96).tobytes() != a.tobytes()


@pytest.mark.parametrize("failure", synthetic.FAILURES)
def test_every_failure_of_other_renders(failure):
    image = synthetic.render_drop(
        seed=3, label=CLASS_NAMES.index("other"), size=64, failure=failure
    )
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8


def test_bad_arguments_are_refused_with_the_value():
    with pytest.raises(ValueError, match="label must be in"):
        synthetic.render_drop(seed=0, label=NUM_CLASSES)
    with pytest.raises(ValueError, match="'dark'"):
        synthetic.render_drop(seed=0, label=CLASS_NAMES.index("clear"), failure="dark")
    with pytest.raises(ValueError, match="'blue'"):
        synthetic.render_drop(seed=0, label=CLASS_NAMES.index("other"), failure="blue")


def test_class_counts_follow_the_weights_and_sum_exactly():
    assert synthetic.class_counts(10, (1, 1, 1, 1)) == [3, 3, 2, 2]
    counts = synthetic.class_counts(1001, (56_672, 212_541, 148_861, 24_856))  # paper Table 2
    assert sum(counts) == 1001 and counts[1] > counts[2] > counts[0] > counts[3]
    with pytest.raises(ValueError, match="class_weights"):
        synthetic.class_counts(10, (1, 1))


def test_generate_is_reproducible_and_balanced():
    first = list(synthetic.generate(12, 32, seed=(5, 0), class_weights=(1, 1, 1, 1)))
    again = list(synthetic.generate(12, 32, seed=(5, 0), class_weights=(1, 1, 1, 1)))
    other_split = list(synthetic.generate(12, 32, seed=(5, 1), class_weights=(1, 1, 1, 1)))

    def as_bytes(examples):
        return [(label, failure, image.tobytes()) for label, failure, image in examples]

    assert as_bytes(first) == as_bytes(again)
    assert [i.tobytes() for *_, i in first] != [i.tobytes() for *_, i in other_split]
    assert np.bincount([label for label, *_ in first], minlength=NUM_CLASSES).tolist() == [3] * 4
    other = CLASS_NAMES.index("other")
    assert all((f in synthetic.FAILURES) == (label == other) for label, f, _ in first)


def _texture_features(images: np.ndarray) -> np.ndarray:
    """Brightness-normalised edge and blob statistics at three scales: what a CNN can see."""
    grey = images.mean(-1)
    feats = []
    for step in (1, 2, 4):
        g = grey[:, ::step, ::step]
        grad = np.hypot(np.diff(g, axis=2)[:, :-1], np.diff(g, axis=1)[:, :, :-1])
        grad /= np.median(grad, axis=(1, 2), keepdims=True) + 1e-3
        lap = 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2]
        lap = (lap - g[:, 1:-1, 2:]) / (g.mean((1, 2))[:, None, None] + 1e-3)
        feats += [np.percentile(grad, q, axis=(1, 2)) for q in (50, 90, 99, 99.9)]
        feats += [np.percentile(lap, q, axis=(1, 2)) for q in (0.1, 1, 99, 99.9)]
    return np.stack(feats, 1)


def test_mean_colour_says_little_while_texture_says_much():
    """The imager style is drawn independently of the class: a classifier on per-image mean and
    spread of each channel stays near chance (25 %), one on edges and blobs does far better."""
    labels = np.arange(400) % NUM_CLASSES
    images = np.stack([synthetic.render_drop(1000 + i, int(c), 96) for i, c in enumerate(labels)])
    images = images.astype(np.float32) / 255.0
    colour = np.concatenate([images.mean((1, 2)), images.std((1, 2))], 1)
    texture = np.concatenate([_texture_features(images), colour], 1)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    colour_acc = cross_val_score(model, colour, labels, cv=5).mean()
    texture_acc = cross_val_score(model, texture, labels, cv=5).mean()
    print(f"mean-colour accuracy {colour_acc:.3f}, texture accuracy {texture_acc:.3f}")
    assert colour_acc < 0.45
    assert texture_acc > colour_acc + 0.1

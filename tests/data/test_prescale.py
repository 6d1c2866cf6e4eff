"""Pre-scaled storage (marco_jax.data.prescale; the builder's prescale_* fields): pre-scaled
training patches match full-size ones (exactly when lossless, within the measured tolerance as
JPEG); the builder records the scale and keeps the test split as given; a config at another
scale is refused in one line, and `main` exits 2 on it."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from absl import flags
from helpers import REPO, SHARED, ci_config

from marco_jax import main
from marco_jax.data import input_pipeline, preprocess, prescale

DROP = SHARED / "real_drops" / "marco_gsk" / "crystals" / "10.jpeg"  # 1280x960
RELEASE = preprocess.Preprocessing(599, 1.0, "tf1_bilinear", "fast")  # configs/default.py
TABLE3 = preprocess.Preprocessing(151, 0.875, "pil_antialias", "accurate")  # ci, synthetic
# JPEG (quality 95, 4:4:4) patches against full-size ones, measured on all 16 shared/real_drops:
# release patches mean |difference| 1.03-1.62 levels, 99.9th percentile 6-11; Table 3's
# 0.61-1.25 levels. Lossless (PNG) Table 3 patches: 1 level in at most 0.03 % of the values
# (Pillow's fixed-point weights of a window against those of the whole image).
RELEASE_JPEG_MEAN, RELEASE_JPEG_P999 = 2.0, 12
TABLE3_JPEG_MEAN = 1.6
NO_FLIPS = {"flip_left_right_prob": 0.0, "flip_up_down_prob": 0.0, "random_rot90": False}


def _stored(p: preprocess.Preprocessing, image_format: str) -> np.ndarray:
    encoded = prescale.Prescaled(p, image_format).encoded(DROP.read_bytes())
    return np.asarray(p.decode(encoded))


def _patches(p: preprocess.Preprocessing, image_format: str, seed: int) -> tuple:
    """Training patches of DROP from the same draws: (full size, pre-scaled, pre-scaled image)."""
    stored = _stored(p, image_format)
    kwargs = {
        "size": p.image_size,
        "central_fraction": p.central_fraction,
        "resize_method": p.resize_method,
        **NO_FLIPS,
    }
    full_size = preprocess.train_transform(
        p.decode(DROP.read_bytes()), np.random.default_rng(seed), **kwargs
    )
    window = preprocess.train_transform(
        stored, np.random.default_rng(seed), prescaled=True, **kwargs
    )
    return full_size, window, stored


def _release_patch_at_origin(image: np.ndarray) -> np.ndarray:
    """The release's training patch at offset (0, 0), as `tf1_random_crop` cuts it."""
    patch = preprocess.tf1_crop_and_resize(image, 0, 0, min(image.shape[:2]), 599)
    return np.clip(np.rint(patch * 255.0), 0, 255).astype(np.uint8)


def test_lossless_release_patches_equal_the_full_size_ones():
    """TF1's offsets fall on source pixels in full size and on stored ones pre-scaled: the two
    grids share the origin, where the patches must be equal."""
    stored = _stored(RELEASE, "png")
    assert stored.shape[0] == 599 and abs(stored.shape[1] - 1280 * 599 / 960) < 1
    full_size = RELEASE.decode(DROP.read_bytes())
    np.testing.assert_array_equal(stored[:599, :599], _release_patch_at_origin(full_size))
    # Training's patch of a pre-scaled image is a window of it, at the offsets it draws.
    _, window, _ = _patches(RELEASE, "png", seed=3)
    draws = np.random.default_rng(3)
    top, left = int(draws.integers(1)), int(draws.integers(stored.shape[1] - 599 + 1))
    np.testing.assert_array_equal(window, stored[top : top + 599, left : left + 599])


def test_jpeg_release_patches_stay_within_the_measured_tolerance():
    stored = _stored(RELEASE, "jpeg")
    full_size = _release_patch_at_origin(RELEASE.decode(DROP.read_bytes()))
    difference = np.abs(stored[:599, :599].astype(int) - full_size)
    assert 0 < difference.mean() <= RELEASE_JPEG_MEAN
    assert np.percentile(difference, 99.9) <= RELEASE_JPEG_P999


@pytest.mark.parametrize("seed", [0, 1])
def test_pillow_patches_of_the_same_draws_match(seed):
    full_size, window, stored = _patches(TABLE3, "png", seed)
    assert min(stored.shape[:2]) == int(prescale.shorter_side(TABLE3)) == 172
    difference = np.abs(window.astype(int) - full_size)
    assert difference.max() <= 1 and np.mean(difference > 0) < 1e-3
    full_size, window, _ = _patches(TABLE3, "jpeg", seed)
    assert 0 < np.abs(window.astype(int) - full_size).mean() <= TABLE3_JPEG_MEAN


def test_prescaling_needs_patches_inside_the_image():
    with pytest.raises(ValueError, match="central_fraction <= 1"):
        prescale.Prescaled(preprocess.Preprocessing(151, 1.2))


@pytest.fixture(scope="module")
def prescaled_config(tfds_data_dir):
    """configs/ci.py training on its dataset's train split pre-scaled as JPEG (built once)."""
    config = ci_config(tfds_data_dir)
    config.dataset.prescale = "jpeg"
    input_pipeline.open_tfds_source(config, "train")
    return config


def test_the_builder_records_the_scale_and_keeps_the_test_split(prescaled_config, tfds_data_dir):
    records = [json.loads(p.read_text()) for p in tfds_data_dir.glob("marco/*/*/metadata.json")]
    recorded = [prescale.Prescaled.from_metadata(r) for r in records]
    assert prescale.Prescaled(TABLE3, "jpeg", 95, ("train",)) in recorded
    assert None in recorded  # the plain dataset of configs/ci.py
    train = input_pipeline.open_tfds_source(prescaled_config, "train")
    assert {min(preprocess.decode_image(train[i]["image"]).shape[:2]) for i in range(4)} == {172}
    test = input_pipeline.open_tfds_source(prescaled_config, "test")
    as_given = input_pipeline.open_tfds_source(ci_config(tfds_data_dir), "test")
    assert len(test) == len(as_given) > 0
    assert all(test[i]["image"] == as_given[i]["image"] for i in range(len(test)))


def test_training_patches_are_windows_of_the_stored_images(prescaled_config):
    config = copy.deepcopy(prescaled_config)
    config.input.update(NO_FLIPS)
    source = input_pipeline.open_tfds_source(config, "train")
    stored = [preprocess.decode_image(source[i]["image"]) for i in range(len(source))]
    dataset = input_pipeline.create_train_dataset(
        config, source, process_index=0, process_count=1, seed=0
    )
    size = config.model.image_size
    for patch in next(iter(dataset))["image"]:
        found = False
        for image in stored:  # candidates: offsets where the first pixel matches
            first = np.all(image[: 1 - size or None, : 1 - size or None] == patch[0, 0], axis=-1)
            for top, left in zip(*np.nonzero(first), strict=True):
                found |= np.array_equal(image[top : top + size, left : left + size], patch)
        assert found


def _other_size(config):
    """A config at 299 px pointed at the dataset pre-scaled for 151 px."""
    config = copy.deepcopy(config)
    config.model.image_size = 299
    config.dataset.config_overrides = {"prescale_image_size": 151}
    return config


def test_a_dataset_prescaled_for_another_size_is_refused_in_one_line(prescaled_config):
    config = _other_size(prescaled_config)
    with pytest.raises(prescale.StorageMismatchError) as refused:
        input_pipeline.open_tfds_source(config, "train")
    message = str(refused.value)
    assert "\n" not in message and "image_size 151 (config: 299)" in message
    assert len(input_pipeline.open_tfds_source(config, "test")) > 0  # stored as given


def test_a_prescaled_split_needs_the_config_to_say_so(prescaled_config):
    """The same dataset named through explicit builder fields, config.dataset.prescale empty:
    its patches would be resampled a second time."""
    config = copy.deepcopy(prescaled_config)
    config.dataset.prescale = ""
    config.dataset.config_overrides = {
        "prescale_format": "jpeg",
        "prescale_image_size": 151,
        "prescale_central_fraction": 0.875,
        "prescale_resize_method": "pil_antialias",
        "prescale_jpeg_dct": "accurate",
    }
    with pytest.raises(prescale.StorageMismatchError, match="config.dataset.prescale is empty"):
        input_pipeline.open_tfds_source(config, "train")


def test_main_exits_2_with_one_line(prescaled_config, tmp_path, capsys):
    fv = flags.FlagValues()
    main.define_flags(fv)
    argv = fv(["main", f"--config={REPO / 'configs' / 'ci.py'}", f"--workdir={tmp_path / 'w'}"])
    fv.config.dataset = _other_size(prescaled_config).dataset
    fv.config.model.image_size = 299
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main.main(argv, fv)
    assert exited.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stored pre-scaled" in errors[0], errors

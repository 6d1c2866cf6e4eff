"""Images/s of the training input pipeline on a folder of JPEGs, next to a classic tf.data one.

The measured work is the whole of the paper's training augmentation (section 3): decode, scale to
the evaluation scale and cut a random size x size patch, random flips, the photometric distortions
(TF-slim's distort_color, random ordering), to uint8 or float32 batches. Our pipeline does the
host part in grain (`data.input_pipeline`) and the photometric part in JAX, here on the CPU
(it runs on the accelerator in training, but it is part of the work); the baseline does all of it
with tf.image ops in a tf.data pipeline with as many parallel calls as cores (the classic way:
antialiased resize of the whole image to the eval scale, then tf.image.random_crop; grain resamples
only the patch's area). Both read the same files (all JPEGs under --images, recursively, repeated
to fill the batches). A third figure is the grain pipeline without the photometric part: what the
host must sustain when, as in training, the distortions run on the accelerator.

  python bench/input_pipeline.py --images ../shared/real_drops --size 599

Prints one JSON line: median images/s of each over --runs windows of --seconds-per-run (after a
warm-up), the ratio grain/tf.data, the CPU time per image (all processes; Linux /proc), the
command line and the machine. With the defaults a run takes one to two minutes on 2 cores
(imports, compilation and stopping the worker processes included).
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator

REPO = pathlib.Path(__file__).resolve().parents[1]
JPEG_SUFFIXES = (".jpg", ".jpeg")


class FileSource:
    """Random-access records read from disk on demand, as an array_record source would be."""

    def __init__(self, paths: list[str]):
        self._paths = paths

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict:
        path = self._paths[index]
        return {"image": pathlib.Path(path).read_bytes(), "label": 0, "filename": path}


def _find_jpegs(folder: str) -> list[str]:
    root = pathlib.Path(folder)
    if not root.is_dir():
        sys.exit(f"--images {folder} is not a directory.")
    paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in JPEG_SUFFIXES)
    if not paths:
        sys.exit(f"No .jpg/.jpeg files under {folder}.")
    return paths


def _cpu_seconds_of_process_tree() -> float:
    """User + system CPU time of this process and its live descendants (worker processes), read
    from /proc (Linux): unlike wall time, barely affected by other programs on the machine."""
    parents, seconds = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = pathlib.Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        pid = int(entry)
        parents[pid] = int(fields[1])
        seconds[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(seconds.get(pid, 0.0) for pid in tree)


def _time_windows(batches: Iterator, args: argparse.Namespace) -> list[tuple[float, float]]:
    """(images/s, CPU ms per image) of consecutive windows of at least --seconds-per-run each.

    The warm-up (compilation, worker start) lasts --warmup-seconds and drains what the pipeline
    buffered meanwhile, so that the windows see its steady state, not its buffers. Windows are
    timed, not counted in batches: workers finish batches in bursts, and a window of one batch
    would measure the burst, not the rate.
    """

    def consume(seconds: float) -> tuple[float, float]:
        start, cpu_start, images = time.perf_counter(), _cpu_seconds_of_process_tree(), 0
        while images == 0 or time.perf_counter() - start < seconds:
            images += len(next(batches))
        rate = images / (time.perf_counter() - start)
        return rate, 1000.0 * (_cpu_seconds_of_process_tree() - cpu_start) / images

    consume(args.warmup_seconds)
    return [consume(args.seconds_per_run) for _ in range(args.runs)]


def _config(args: argparse.Namespace):
    """configs/default.py (the paper's augmentation numbers) at the benchmark's size and batch."""
    from marco_jax.config_utils import load_config

    config = load_config(REPO / "configs" / "default.py")
    config.model.image_size = args.size
    config.input.global_batch_size = args.batch
    config.input.num_workers = args.workers
    return config


def _grain_batches(
    paths: list[str], args: argparse.Namespace, photometric: bool
) -> tuple[Iterator, Callable]:
    """The training pipeline's batches, with the photometric distortions in JAX on the CPU, or
    without them (what the host must deliver when they run on the accelerator)."""
    import jax

    jax.config.update("jax_platforms", "cpu")
    import jax.numpy as jnp

    from marco_jax.data import augment, input_pipeline

    config = _config(args)

    @jax.jit
    def distort(key, images):
        images = augment.distort_color(key, images, config.input)
        if args.dtype == "uint8":
            return jnp.round(images * 255.0).astype(jnp.uint8)
        return images

    dataset = input_pipeline.create_train_dataset(
        config, FileSource(paths), process_index=0, process_count=1, seed=0
    )
    iterator = iter(dataset)

    def batches():
        key = jax.random.key(0)
        for step in range(sys.maxsize):
            images = next(iterator)["image"]
            if photometric:
                images = jax.block_until_ready(distort(jax.random.fold_in(key, step), images))
            yield images

    return batches(), iterator.close


def _tf_batches(paths: list[str], args: argparse.Namespace, cores: int) -> Iterator:
    import tensorflow as tf

    from marco_jax.data import augment

    config = _config(args)
    size = config.model.image_size
    brightness = config.input.brightness_delta
    saturation = config.input.saturation_range
    hue = config.input.hue_delta
    contrast = config.input.contrast_range

    random_ops = {
        augment.BRIGHTNESS: lambda x: tf.image.random_brightness(x, brightness),
        augment.SATURATION: lambda x: tf.image.random_saturation(x, *saturation),
        augment.HUE: lambda x: tf.image.random_hue(x, hue),
        augment.CONTRAST: lambda x: tf.image.random_contrast(x, *contrast),
    }

    def distort_color(image, ordering):
        """TF-slim inception_preprocessing.distort_color (fast_mode=False), random ordering."""

        def branch(names):
            def apply():
                x = image
                for name in names:
                    x = random_ops[name](x)
                return x

            return apply

        image = tf.switch_case(ordering, [branch(names) for names in augment.SLIM_ORDERINGS])
        return tf.clip_by_value(image, 0.0, 1.0)

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        height = tf.cast(tf.shape(image)[0], tf.float32)
        width = tf.cast(tf.shape(image)[1], tf.float32)
        scale = size / (config.input.central_fraction * tf.minimum(height, width))
        scaled = tf.cast(tf.math.ceil(tf.stack([height * scale, width * scale])), tf.int32)
        image = tf.image.resize(image, scaled, method="bilinear", antialias=True)
        image = tf.image.random_crop(image, [size, size, 3])
        image = tf.image.random_flip_left_right(image)
        image = tf.image.random_flip_up_down(image)
        ordering = tf.random.uniform([], maxval=4, dtype=tf.int32)
        image = distort_color(image / 255.0, ordering)
        if args.dtype == "uint8":
            return tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
        return image

    options = tf.data.Options()
    options.threading.private_threadpool_size = cores
    dataset = (
        tf.data.Dataset.from_tensor_slices(paths)
        .repeat()
        .shuffle(len(paths), seed=0)
        .map(load, num_parallel_calls=cores)
        .batch(args.batch, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
    return iter(dataset.as_numpy_iterator())


def _versions() -> dict:
    from importlib import metadata

    names = ("jax", "jaxlib", "grain", "tensorflow-cpu", "numpy", "pillow")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def main() -> None:
    cores = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="folder searched recursively for JPEGs")
    parser.add_argument("--batch", type=int, default=64)  # paper section 3
    parser.add_argument("--size", type=int, default=599)  # paper section 3
    parser.add_argument("--workers", type=int, default=cores, help="grain worker processes")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds-per-run", type=float, default=2.0)
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument("--dtype", choices=("uint8", "float32"), default="uint8")
    args = parser.parse_args()
    paths = _find_jpegs(args.images)
    load_at_start = os.getloadavg()[0]

    windows = {}
    for name, photometric in (("grain_jax", True), ("grain_host_only", False)):
        batches, close = _grain_batches(paths, args, photometric)
        windows[name] = _time_windows(batches, args)
        close()
    windows["tf_data"] = _time_windows(_tf_batches(paths, args, cores), args)
    rates = {name: [rate for rate, _ in values] for name, values in windows.items()}
    medians = {name: statistics.median(values) for name, values in rates.items()}
    cpu_ms = {name: statistics.median(ms for _, ms in values) for name, values in windows.items()}
    result = {
        "benchmark": "input_pipeline",
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "files": len(paths),
        "size": args.size,
        "batch": args.batch,
        "dtype": args.dtype,
        "grain_workers": args.workers,
        "tf_data_parallel_calls": cores,
        "grain_jax_images_per_s": round(medians["grain_jax"], 2),
        "tf_data_images_per_s": round(medians["tf_data"], 2),
        "ratio_grain_over_tf_data": round(medians["grain_jax"] / medians["tf_data"], 3),
        # Decode + crop + flips only: the host's share when the distortions run on the device.
        "grain_host_only_images_per_s": round(medians["grain_host_only"], 2),
        # CPU time (all processes and threads of the pipeline) per image: the cost, robust to
        # other load on the machine, which the images/s are not.
        "cpu_ms_per_image": {name: round(ms, 1) for name, ms in cpu_ms.items()},
        "runs_images_per_s": {
            name: [round(r, 2) for r in values] for name, values in rates.items()
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "cores_available": cores,
            # Other processes on the machine slow both pipelines alike; recorded to judge that.
            "load_average_1min_at_start": round(load_at_start, 2),
            "python": platform.python_version(),
            **_versions(),
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

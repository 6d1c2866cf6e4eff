"""Images/s of the training input pipeline on a folder of JPEGs: per core and per worker count,
for the images as given and pre-scaled (`marco_jax.data.prescale`), and next to tf.data.

  python bench/input_pipeline.py --images ../shared/real_drops --size 599 --workers 1,2 \
      --storage original,jpeg [--with-tf-data]

The host's share (what it must sustain when the photometric distortions run on the accelerator,
as in training): decode, the random patch at the evaluation scale, flips, batched by the grain
pipeline of `data.input_pipeline` with configs/default.py's preprocessing (the release's: TF1
bilinear, fast DCT) at --size. It is measured for each storage (--storage: `original` the files
as given; `jpeg`/`png` the same files pre-scaled for that preprocessing by the builder's own
function, `Prescaled.encoded`) at each worker count (--workers: a list gives the scaling
curve). Per core: images per CPU-second of all the pipeline's processes at 1 worker (CPU time
barely moves with other load on the machine, wall time does), and the wall images/s at 1 worker;
the ratio of each storage to `original`. Records are held in memory for every storage alike.

With --with-tf-data, the whole of the paper's training augmentation (section 3) is also timed,
on the original files at the largest worker count (needs TensorFlow): decode, scale to the
evaluation scale and cut a random patch, flips, the photometric distortions (TF-slim's
distort_color, random ordering), to uint8 or float32 batches. Our pipeline does the host part in
grain and the photometric part in JAX, here on the CPU (it runs on the accelerator in training,
but it is part of the work); the baseline does all of it with tf.image ops in a tf.data pipeline
with as many parallel calls as cores (the classic way: antialiased resize of the whole image to
the eval scale, then tf.image.random_crop).

Prints one JSON line: for each measurement the median images/s over --runs windows of
--seconds-per-run after a warm-up, and the CPU time per image (all processes; Linux /proc); the
command line and the machine. Each measurement (worker start included) takes ~15 s; the
defaults (2 storages, 1 worker and all cores) about a minute.
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


STORAGES = ("original", "jpeg", "png")


# Records the source pretends to hold (the files, repeated): grain's global shuffle costs ~2 ms
# a record on a 16-record source (its index permutation walks a far larger domain) and ~0.01 ms
# on one of thousands, as real datasets are; a tiny source would bill that to every image.
SOURCE_RECORDS = 4096


class BytesSource:
    """Random-access records held in memory, as an array_record source hands them out: the
    images repeated to SOURCE_RECORDS records."""

    def __init__(self, images: list[bytes]):
        self._images = images

    def __len__(self) -> int:
        return max(SOURCE_RECORDS, len(self._images))

    def __getitem__(self, index: int) -> dict:
        return {"image": self._images[index % len(self._images)], "label": 0, "filename": ""}


def _stored_images(paths: list[str], storage: str, args: argparse.Namespace) -> list[bytes]:
    """The files' bytes as given, or pre-scaled for the benchmark's preprocessing."""
    from marco_jax.data import preprocess, prescale

    originals = [pathlib.Path(path).read_bytes() for path in paths]
    if storage == "original":
        return originals
    prescaled = prescale.Prescaled(preprocess.Preprocessing.from_config(_config(args)), storage)
    return [prescaled.encoded(data) for data in originals]


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


def _config(args: argparse.Namespace, workers: int = 0):
    """configs/default.py (the paper's augmentation numbers) at the benchmark's size and batch."""
    from marco_jax.config_utils import load_config

    config = load_config(REPO / "configs" / "default.py")
    config.model.image_size = args.size
    config.input.global_batch_size = args.batch
    config.input.num_workers = workers
    config.input.read_threads = args.read_threads
    return config


def _host_batches(
    images: list[bytes], args: argparse.Namespace, workers: int
) -> tuple[Iterator, Callable]:
    """The training pipeline's batches as the host delivers them (no JAX)."""
    from marco_jax.data import input_pipeline

    dataset = input_pipeline.create_train_dataset(
        _config(args, workers), BytesSource(images), process_index=0, process_count=1, seed=0
    )
    iterator = iter(dataset)

    def batches():
        while True:
            yield next(iterator)["image"]

    return batches(), iterator.close


def _grain_jax_batches(
    images: list[bytes], args: argparse.Namespace, workers: int
) -> tuple[Iterator, Callable]:
    """The host's batches followed by the photometric distortions in JAX on the CPU."""
    import jax

    jax.config.update("jax_platforms", "cpu")
    import jax.numpy as jnp

    from marco_jax.data import augment

    config = _config(args, workers)

    @jax.jit
    def distort(key, images):
        images = augment.distort_color(key, images, config.input)
        if args.dtype == "uint8":
            return jnp.round(images * 255.0).astype(jnp.uint8)
        return images

    host, close = _host_batches(images, args, workers)

    def batches():
        key = jax.random.key(0)
        for step, images in enumerate(host):
            yield jax.block_until_ready(distort(jax.random.fold_in(key, step), images))

    return batches(), close


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


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected integers separated by commas"
        ) from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: worker counts must be >= 0")
    return values


def _storage_list(text: str) -> list[str]:
    values = text.split(",")
    if unknown := [v for v in values if v not in STORAGES]:
        raise argparse.ArgumentTypeError(f"unknown storage {unknown}: use {STORAGES}")
    return values


def _measure(batches: Iterator, close: Callable, args: argparse.Namespace) -> dict:
    windows = _time_windows(batches, args)
    close()
    rates = [rate for rate, _ in windows]
    cpu_ms = statistics.median(ms for _, ms in windows)
    return {
        "images_per_s": round(statistics.median(rates), 2),
        # CPU time (all processes and threads of the pipeline) per image: the cost, robust to
        # other load on the machine, which the images/s are not.
        "cpu_ms_per_image": round(cpu_ms, 2),
        "images_per_cpu_s": round(1000.0 / cpu_ms, 2),
        "runs_images_per_s": [round(r, 2) for r in rates],
    }


def _scaling(by_workers: dict[int, dict]) -> list[dict]:
    """The curve: images/s at each worker count, and its speed-up over the fewest workers."""
    base = by_workers[min(by_workers)]["images_per_s"]
    return [
        {
            "workers": workers,
            "images_per_s": result["images_per_s"],
            "speedup": round(result["images_per_s"] / base, 3),
            "images_per_cpu_s": result["images_per_cpu_s"],
        }
        for workers, result in sorted(by_workers.items())
    ]


def _per_core(host: dict[str, dict[int, dict]], workers: list[int]) -> dict | None:
    """Per-core figures at 1 worker (one process decoding), each storage against `original`."""
    if 1 not in workers:
        return None
    per_core = {
        storage: {
            "images_per_cpu_s": by_workers[1]["images_per_cpu_s"],
            "images_per_s_one_worker": by_workers[1]["images_per_s"],
        }
        for storage, by_workers in host.items()
    }
    if "original" in per_core:
        reference = per_core["original"]
        for storage, figures in per_core.items():
            if storage != "original":
                for name in ("images_per_cpu_s", "images_per_s_one_worker"):
                    figures[f"ratio_{name}_over_original"] = round(
                        figures[name] / reference[name], 2
                    )
    return per_core


def _tf_data_comparison(paths: list[str], args: argparse.Namespace, cores: int) -> dict:
    """The paper's whole augmentation: grain + JAX distortions against tf.data, original files."""
    images = _stored_images(paths, "original", args)
    workers = max(args.workers)
    grain_jax = _measure(*_grain_jax_batches(images, args, workers), args)
    tf_data = _measure(_tf_batches(paths, args, cores), lambda: None, args)
    return {
        "grain_workers": workers,
        "tf_data_parallel_calls": cores,
        "grain_jax": grain_jax,
        "tf_data": tf_data,
        "ratio_grain_over_tf_data": round(grain_jax["images_per_s"] / tf_data["images_per_s"], 3),
    }


def main() -> None:
    cores = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="folder searched recursively for JPEGs")
    parser.add_argument("--batch", type=int, default=64)  # paper section 3
    parser.add_argument("--size", type=int, default=599)  # paper section 3
    parser.add_argument(
        "--workers",
        type=_int_list,
        default=sorted({1, cores}),
        help="grain worker processes: one count or a list (1,2,4,...) for the scaling curve",
    )
    parser.add_argument(
        "--read-threads", type=int, default=-1, help="threads per worker (-1: the auto choice)"
    )
    parser.add_argument(
        "--storage",
        type=_storage_list,
        default=["original", "jpeg"],
        help=f"comma-separated, of {STORAGES}",
    )
    parser.add_argument("--with-tf-data", action="store_true", help="also time tf.data")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds-per-run", type=float, default=2.0)
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument("--dtype", choices=("uint8", "float32"), default="uint8")
    args = parser.parse_args()
    paths = _find_jpegs(args.images)
    load_at_start = os.getloadavg()[0]

    host: dict[str, dict[int, dict]] = {}
    for storage in args.storage:
        images = _stored_images(paths, storage, args)
        host[storage] = {
            workers: _measure(*_host_batches(images, args, workers), args)
            for workers in args.workers
        }
        host[storage]["stored_kib_per_image"] = round(sum(map(len, images)) / len(images) / 1024)
    stored_kib = {storage: results.pop("stored_kib_per_image") for storage, results in host.items()}
    result = {
        "benchmark": "input_pipeline",
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "files": len(paths),
        "size": args.size,
        "batch": args.batch,
        "read_threads": args.read_threads,
        "stored_kib_per_image": stored_kib,
        # Decode + crop + flips: the host's share when the distortions run on the device.
        "per_core": _per_core(host, args.workers),
        "scaling": {storage: _scaling(results) for storage, results in host.items()},
        "host_only": {
            storage: {str(workers): figures for workers, figures in results.items()}
            for storage, results in host.items()
        },
    }
    if args.with_tf_data:
        result["dtype"] = args.dtype
        result["tf_data_comparison"] = _tf_data_comparison(paths, args, cores)
    result["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cores_available": cores,
        # Other processes on the machine slow every pipeline alike; recorded to judge that.
        "load_average_1min_at_start": round(load_at_start, 2),
        "python": platform.python_version(),
        **_versions(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

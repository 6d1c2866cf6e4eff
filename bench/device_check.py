"""The Python stages of bench/device_check.sh, each printing JSON lines.

  python bench/device_check.py imports
  python bench/device_check.py data --config configs/synthetic_599.py --data_dir DIR [--config.x=y]
  python bench/device_check.py summarize --workdir DIR --bench_lines FILE [--steady_from 30]

`imports`: the versions of what the run needs, and whether TensorFlow is there (it is not on the
device machine: training then writes its scalars without clu's writers). `data`: opens (building
it on first use) the training run's dataset, as `marco_jax.main` will. `summarize`: the training
run's throughput from its TensorBoard events (the steady windows, from --steady_from on)
against the step alone (bench/train_step.py's line at the same batch per device), and a
summary of every train_step line.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import pathlib
import statistics
import sys
import time
from typing import Any

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/synthetic_599.py", "Run config.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir of the training run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir.")
_BENCH = flags.DEFINE_string("bench_lines", None, "JSON lines of bench/train_step.py.")
_STEADY = flags.DEFINE_integer("steady_from", 30, "First logged step counted as steady.")
_INPUT_BOUND = flags.DEFINE_float(
    "input_bound_share", 0.1, "input_wait_share above which the run counts as input-bound."
)

# What the training run needs beyond the device's own packages, and what it must do without.
NEEDED = ("jax", "flax", "optax", "orbax.checkpoint", "ml_collections", "grain", "clu")
NEEDED += ("tensorflow_datasets", "array_record", "simplejpeg", "tensorboard", "etils")


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def imports() -> None:
    versions = {}
    for name in NEEDED:
        try:
            module = importlib.import_module(name)
            versions[name] = getattr(module, "__version__", "?")
        except Exception as e:  # noqa: BLE001 - report every missing piece, not the first
            versions[name] = f"MISSING: {type(e).__name__}: {e}"
    import jax

    _emit(
        {
            "stage": "imports",
            "python": sys.version.split()[0],
            "versions": versions,
            "tensorflow": importlib.util.find_spec("tensorflow") is not None,
            "devices": [str(d) for d in jax.devices()],
            "ok": not any(str(v).startswith("MISSING") for v in versions.values()),
        }
    )


def data() -> None:
    from marco_jax.data import input_pipeline

    config = _CONFIG.value
    config.dataset.data_dir = _DATA_DIR.value
    prepared = pathlib.Path(_DATA_DIR.value).glob("marco/*/*/dataset_info.json")
    before = {p.parent for p in prepared}
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # TFDS prints its build; stdout is JSON
        train = input_pipeline.open_tfds_source(config, config.dataset.train_split)
        test = input_pipeline.open_tfds_source(config, config.dataset.eval_split)
    _emit(
        {
            "stage": "data",
            "data_dir": _DATA_DIR.value,
            "train_images": len(train),
            "test_images": len(test),
            "prescale": config.dataset.get("prescale", ""),
            # Built here (not carried): the carried one was made by other builder code.
            "built": sorted(
                str(p.parent.relative_to(_DATA_DIR.value))
                for p in pathlib.Path(_DATA_DIR.value).glob("marco/*/*/dataset_info.json")
                if p.parent not in before
            ),
            "seconds": round(time.perf_counter() - start, 1),
        }
    )


def _scalars(workdir: pathlib.Path) -> dict[int, dict[str, float]]:
    """{step: {tag: value}} from the TensorBoard event files under `workdir` (clu's TF writer
    stores scalars as tensors, monitoring's TF-free writer as simple values)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    found: dict[int, dict[str, float]] = {}
    if not workdir.is_dir():  # no training run (DEVICE_CHECK_SKIP_E2E=1, or it failed early)
        return found
    for path in sorted(workdir.rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    number = value.simple_value
                elif value.HasField("tensor"):
                    array = tensor_util.make_ndarray(value.tensor)
                    if array.size != 1 or array.dtype.kind not in "fiub":
                        continue
                    number = float(array.item())
                else:
                    continue
                found.setdefault(event.step, {})[value.tag] = float(number)
    return found


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def _bench_lines(path: str | None) -> list[dict[str, Any]]:
    if not path or not pathlib.Path(path).exists():
        return []
    lines = []
    for text in pathlib.Path(path).read_text().splitlines():
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if record.get("benchmark") == "train_step" and "images_per_second" in record:
            lines.append(record)
    return lines


def summarize() -> None:
    config = _CONFIG.value
    scalars = _scalars(pathlib.Path(_WORKDIR.value))
    windows = [
        values
        for step, values in sorted(scalars.items())
        if step >= _STEADY.value and "train/images_per_second" in values
    ]
    e2e = _median([w["train/images_per_second"] for w in windows])
    wait = _median([w["train/input_wait_share"] for w in windows if "train/input_wait_share" in w])
    per_device = config.input.global_batch_size  # one device; bench lines are per device
    bench = _bench_lines(_BENCH.value)
    step_only = next(
        (
            b
            for b in bench
            if b["variant"] == "baseline"
            and b["aux_logits"] == config.model.aux_logits
            and b["per_device_batch"] * 1 == per_device
        ),
        None,
    )
    result: dict[str, Any] = {
        "stage": "e2e_summary",
        "global_batch": per_device,
        "steady_windows": len(windows),
        "images_per_second": e2e,
        "step_time_ms": _median(
            [w["train/step_time_ms"] for w in windows if "train/step_time_ms" in w]
        ),
        "input_wait_share": wait,
        "input_wait_ms": _median(
            [w["train/input_wait_ms"] for w in windows if "train/input_wait_ms" in w]
        ),
        "bound": None if wait is None else ("input" if wait > _INPUT_BOUND.value else "step"),
        "eval_accuracy": next(
            (v["eval/accuracy"] for _, v in sorted(scalars.items()) if "eval/accuracy" in v), None
        ),
        "final_train_loss": next(
            (
                v["train/loss"]
                for _, v in sorted(scalars.items(), reverse=True)
                if "train/loss" in v
            ),
            None,
        ),
    }
    if step_only and e2e:
        result["step_only_images_per_second"] = step_only["images_per_second"]
        # The step alone keeps the device busy; the run's rate against it is the device's busy
        # share in the run, and the rest is the time it waited (for data, or for the host).
        result["device_busy_share"] = round(e2e / step_only["images_per_second"], 4)
        result["device_wait_share"] = round(1 - e2e / step_only["images_per_second"], 4)
    _emit(result)
    _emit(
        {
            "stage": "train_step_summary",
            "rows": [
                {
                    "batch": b["per_device_batch"],
                    "aux": b["aux_logits"],
                    "variant": b["variant"],
                    "img_s": b["images_per_second"],
                    "step_ms": b["step_ms"],
                    "compile_s": b["compile_seconds"],
                    "mfu_spec": b.get("mfu_vs_spec"),
                    "mfu_790": b.get("mfu_vs_measured_matmul"),
                }
                for b in bench
            ],
        }
    )


STAGES = {"imports": imports, "data": data, "summarize": summarize}


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in STAGES:
        raise app.UsageError(f"Name one stage: {sorted(STAGES)}.")
    STAGES[argv[1]]()


if __name__ == "__main__":
    app.run(main)

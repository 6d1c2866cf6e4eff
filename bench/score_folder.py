"""Whole scoring runs of a folder of drop photographs, side by side in one run: the released MARCO
model under TensorFlow, as labs run it today, against `classify --model` with each runtime and
precision.

  nice python bench/score_folder.py [--images ../shared/real_drops] [--copies 4] [--repeats 2]
      [--paths release_tf,onnxruntime,openvino_f32,openvino_bf16,openvino_int8[,tflite]]
      [--python /tmp/labvenv/bin/python] [--cache /tmp/marco_bench_score_folder]

The peer: the release's SavedModel under TensorFlow, `serving_default` with one JPEG per call, as
AMi_Image_Analysis and the release's Classify.py call it. Its trained values are not available
here, so its real graph (../shared/released_marco) is filled with random, calibrated values by
the tests' `release_graph.write_random_release`. Our side runs the same network at the same
599 px with the same values: that release imported (`import_release`) and exported (ONNX,
OpenVINO IR, and an int8 IR calibrated on ../shared/real_drops: written with --force, because a
random network's outputs move far more under quantization than a trained one's; its agreement
figures are printed, and a lab's own export is refused under 99 %).

Each run is a fresh process, as a lab runs it: its wall time from launch to exit (interpreter,
imports, model loading, reading and scoring the folder), its CPU time and peak RSS, and its
images/s in-process (the scoring loop alone, after loading: the release client's loop, or
classify's own count from its last log line, which also gives the share of the work spent
reading and cropping). The paths take turns over --repeats rounds; medians are reported, with each
path's ratio to the release: its wall time over the release's wall time (start-up included) and
its in-process images/s over the release's; and its CPU time over the release's (on a machine
that others share, the wall times follow how the scheduler shares the cores; the CPU times
follow the work). --python runs classify in another environment (the
light install of requirements-lab.txt); TensorFlow runs in this one.

The folder, the release, the imported workdir and the exports are made once and kept under
--cache (about ten minutes on 2 busy cores the first time). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
JPEG_SUFFIXES = (".jpg", ".jpeg")
PATHS = ("release_tf", "onnxruntime", "openvino_f32", "openvino_bf16", "openvino_int8", "tflite")
DEFAULT_PATHS = PATHS[:-1]  # TFLite: its export takes minutes more, and it is no faster than ORT
# classify's arguments per path (beside --model): which export, which runtime and precision.
CLASSIFY_ARGS = {
    "onnxruntime": ("marco.onnx", []),
    "openvino_f32": ("marco.xml", []),
    "openvino_bf16": ("marco.xml", ["--precision=bf16"]),
    "openvino_int8": ("marco_int8.xml", []),
    "tflite": ("marco.tflite", []),
}
# The release's client, as its users write one: load, then one {"image_bytes": [jpeg]} per call.
RELEASE_CLIENT = """
import json, pathlib, sys, time
import tensorflow as tf
release, folder = sys.argv[1:3]
serve = tf.saved_model.load(release).signatures["serving_default"]
paths = sorted(p for p in pathlib.Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
start = time.perf_counter()
for path in paths:
    serve(image_bytes=tf.constant([path.read_bytes()]))["scores"].numpy()
print(json.dumps({"images": len(paths), "scoring_s": time.perf_counter() - start}))
"""
CLASSIFY_RATE = re.compile(r"([0-9.]+) images/s on \w+; reading and cropping took ([0-9.]+)%")


def run_timed(command: list[str], cwd: pathlib.Path = REPO) -> dict[str, Any]:
    """Runs a command to its end; its wall and CPU seconds, peak RSS, exit code and output."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, cwd=cwd, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        return {
            "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
            "returncode": child.returncode,
            "stdout": out.read(),
            "stderr": err.read(),
        }


def _checked(result: dict[str, Any], what: str) -> dict[str, Any]:
    if result["returncode"] != 0:
        sys.exit(f"{what} failed (exit {result['returncode']}):\n{result['stderr'][-3000:]}")
    return result


def _module(python: str, name: str, *args: str) -> dict[str, Any]:
    return _checked(run_timed([python, "-m", f"marco_jax.{name}", *args]), f"marco_jax.{name}")


def prepare(cache: pathlib.Path, images: pathlib.Path, copies: int, tflite: bool) -> dict:
    """The folder, the random-valued release, its import and the exports (made once)."""
    jpegs = sorted(p for p in images.rglob("*") if p.suffix.lower() in JPEG_SUFFIXES)
    if not jpegs:
        sys.exit(f"--images {images}: no .jpg/.jpeg files.")
    folder = cache / f"folder_{len(jpegs)}x{copies}"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for copy in range(copies):
            for index, path in enumerate(jpegs):
                shutil.copyfile(path, folder / f"{copy}_{index:03d}{path.suffix.lower()}")
    release = cache / "release"
    if not (release / "variables").is_dir():
        sys.path.insert(0, str(REPO / "tests"))
        import release_graph  # the tests' maker of the random-valued release (TensorFlow)

        release_graph.write_random_release(release)
    workdir, export = cache / "workdir", cache / "export"
    if not (workdir / "config.json").is_file():
        _module(sys.executable, "import_release", f"--savedmodel={release}", f"--workdir={workdir}")
    figures = {}
    formats = ["onnx", "openvino", *(["tflite"] if tflite else [])]
    for fmt in formats:
        name = {"onnx": "marco.onnx", "openvino": "marco.xml", "tflite": "marco.tflite"}[fmt]
        if not (export / name).exists():
            _module(sys.executable, "export", f"--workdir={workdir}", f"--format={fmt}",
                    f"--out={export}")  # fmt: skip
    int8_record = export / "int8.json"
    if not int8_record.is_file():
        result = _module(
            sys.executable, "export", f"--workdir={workdir}", "--format=openvino", "--int8",
            f"--calibration={SHARED / 'real_drops'}", "--force", f"--out={export}",
        )  # fmt: skip
        int8_record.write_text(result["stdout"].strip().splitlines()[-1])
    figures = json.loads(int8_record.read_text())["int8"]
    return {"folder": folder, "release": release, "export": export, "int8": figures}


def run_path(path: str, setup: dict, python: str, threads: int | None) -> dict[str, Any]:
    folder = setup["folder"]
    if path == "release_tf":
        result = _checked(
            run_timed([sys.executable, "-c", RELEASE_CLIENT, str(setup["release"]), str(folder)]),
            path,
        )
        inside = json.loads(result["stdout"].strip().splitlines()[-1])
        images, rate, read_share = inside["images"], inside["images"] / inside["scoring_s"], None
    else:
        model, extra = CLASSIFY_ARGS[path]
        with tempfile.TemporaryDirectory() as tmp:
            command = [python, "-m", "marco_jax.classify", f"--model={setup['export'] / model}",
                       str(folder), f"--output={tmp}/scores.csv", *extra]  # fmt: skip
            if threads:
                command.append(f"--threads={threads}")
            result = _checked(run_timed(command), path)
        match = CLASSIFY_RATE.search(result["stderr"])
        if match is None:
            sys.exit(f"{path}: classify's log has no rate line:\n{result['stderr'][-2000:]}")
        images = int(re.search(r"scored (\d+)", result["stdout"]).group(1))
        rate, read_share = float(match.group(1)), float(match.group(2)) / 100
    return {
        "images": images,
        "wall_s": result["wall_s"],
        "cpu_s": result["cpu_s"],
        "max_rss_mb": result["max_rss_mb"],
        "images_per_s_in_process": rate,
        "images_per_s_wall": images / result["wall_s"],
        "read_share": read_share,
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("wall_s", "cpu_s", "images_per_s_in_process", "images_per_s_wall", "read_share")
    summary = {
        key: statistics.median(r[key] for r in runs) for key in keys if runs[0][key] is not None
    }
    summary["max_rss_mb"] = max(r["max_rss_mb"] for r in runs)
    summary["runs"] = runs
    return summary


def _machine() -> dict[str, Any]:
    from importlib import metadata

    versions = {}
    for name in ("tensorflow-cpu", "openvino", "onnxruntime", "nncf", "numpy", "pillow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {
        "cpu": cpu,
        "cores_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "versions": versions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(SHARED / "real_drops"))
    parser.add_argument("--copies", type=int, default=4, help="Each image this many times.")
    parser.add_argument("--repeats", type=int, default=2, help="Rounds over the paths.")
    parser.add_argument("--paths", default=",".join(DEFAULT_PATHS), help=f"Among {PATHS}.")
    parser.add_argument("--python", default=sys.executable, help="Interpreter for classify.")
    parser.add_argument("--threads", type=int, default=None, help="classify --threads.")
    parser.add_argument(
        "--cache", default=os.path.join(tempfile.gettempdir(), "marco_bench_score_folder")
    )
    args = parser.parse_args()
    paths = args.paths.split(",")
    unknown = sorted(set(paths) - set(PATHS))
    if unknown or "release_tf" not in paths:
        sys.exit(f"--paths: unknown {unknown}; choose among {PATHS}, release_tf included.")
    load_before = os.getloadavg()
    setup = prepare(
        pathlib.Path(args.cache), pathlib.Path(args.images), args.copies, "tflite" in paths
    )
    runs: dict[str, list] = {path: [] for path in paths}
    for round_index in range(args.repeats):
        for path in paths if round_index % 2 == 0 else paths[::-1]:  # alternate the order
            runs[path].append(run_path(path, setup, args.python, args.threads))
            print(f"{path}: {json.dumps(runs[path][-1])}", file=sys.stderr)
    results = {path: _summary(r) for path, r in runs.items()}
    release = results["release_tf"]
    ratios = {
        path: {
            "wall_speedup": release["wall_s"] / r["wall_s"],
            "cpu_time_speedup": release["cpu_s"] / r["cpu_s"],
            "in_process_speedup": r["images_per_s_in_process"] / release["images_per_s_in_process"],
        }
        for path, r in results.items()
        if path != "release_tf"
    }
    report = {
        "benchmark": "bench/score_folder.py",
        "command": " ".join(sys.argv),
        "folder": {
            "path": str(setup["folder"]),
            "images": results["release_tf"]["runs"][0]["images"],
        },
        "classify_python": args.python,
        "speedup_vs_release_tf": ratios,
        "results": results,
        "int8_agreement_on_held_out_drops": setup["int8"],
        "machine": _machine(),
        "load_average_before_after": [load_before, os.getloadavg()],
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""Start-up of `classify --model` on one image: wall time, CPU time and peak memory of the whole
process, as a lab sees it when it scores a single drop.

  nice python bench/startup.py --model EXPORT [--model EXPORT ...]
      [--python /tmp/labvenv/bin/python] [--image PHOTO.jpg] [--runs 5]

The target (the lab-scoring issue): at most 1.5 s wall and 400 MB in the light install
(requirements-lab.txt), for the release-shaped network at 599 px. Each run is a fresh process
(`score_folder.run_timed`); the models take turns; medians (the peak memory: the largest) are
printed as one JSON object, with the load average, since on a shared machine the wall time
follows how much of the cores the others leave (the CPU time does not).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile

from score_folder import REPO, SHARED, run_timed

WALL_TARGET_S, MEMORY_TARGET_MB = 1.5, 400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="An export (repeatable).")
    parser.add_argument("--python", default=sys.executable, help="Interpreter for classify.")
    parser.add_argument(
        "--image", default=str(SHARED / "real_drops" / "marco_gsk" / "clear" / "220.jpeg")
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--classify_args", default="", help="More classify flags, space-separated.")
    args = parser.parse_args()
    load_before = os.getloadavg()
    runs: dict[str, list] = {model: [] for model in args.model}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for model in args.model:
                command = [args.python, "-m", "marco_jax.classify", f"--model={model}", args.image,
                           f"--output={tmp}/one.csv", *args.classify_args.split()]  # fmt: skip
                result = run_timed(command, cwd=REPO)
                if result["returncode"] != 0:
                    sys.exit(f"{' '.join(command)} failed:\n{result['stderr'][-3000:]}")
                runs[model].append({k: result[k] for k in ("wall_s", "cpu_s", "max_rss_mb")})
    results = {}
    for model, measured in runs.items():
        wall = statistics.median(r["wall_s"] for r in measured)
        rss = max(r["max_rss_mb"] for r in measured)
        results[pathlib.Path(model).name] = {
            "wall_s_median": wall,
            "wall_s_min": min(r["wall_s"] for r in measured),
            "cpu_s_median": statistics.median(r["cpu_s"] for r in measured),
            "max_rss_mb": rss,
            "within_targets": wall <= WALL_TARGET_S and rss <= MEMORY_TARGET_MB,
            "runs": measured,
        }
    print(
        json.dumps(
            {
                "benchmark": "bench/startup.py",
                "command": " ".join(sys.argv),
                "python": args.python,
                "targets": {"wall_s": WALL_TARGET_S, "max_rss_mb": MEMORY_TARGET_MB},
                "results": results,
                "load_average_before_after": [load_before, os.getloadavg()],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

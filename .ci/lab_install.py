"""CI: the lab's light install scores as the main environment does.

  .venv/bin/python .ci/lab_install.py [--venv DIR]

In the main environment (this interpreter), a configs/ci.py network with random weights is
exported as an OpenVINO IR and an ONNX file, and each scores ../shared/real_drops with
`classify --model`. A second virtualenv gets only requirements-lab.txt and the package
(`pip install --no-deps -e .`): it must hold neither JAX, TensorFlow nor clu, and its
`classify --model` must write the same CSVs, byte for byte (the same probabilities). Exits 1
with the difference otherwise.
"""

from __future__ import annotations

import argparse
import difflib
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
DROPS = REPO.parent / "shared" / "real_drops"
EXPORT = """
import sys
from marco_jax import config_utils
from marco_jax.model import inception
from marco_jax.serving import export
config = config_utils.load_config(sys.argv[1])
model = inception.create_model(config, rngs=0)
for fmt in ("openvino", "onnx"):
    print(export.export_model(model, config, sys.argv[2], fmt))
"""
NOT_IN_THE_LAB = ("jax", "jaxlib", "tensorflow", "tensorflow_cpu", "clu", "flax")


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{result.stderr[-3000:]}")
    return result


def _score(python: str | pathlib.Path, model: str, out: pathlib.Path) -> str:
    _run([python, "-m", "marco_jax.classify", f"--model={model}", DROPS, f"--output={out}"],
         cwd=REPO)  # fmt: skip
    return out.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", help="Where to make the light virtualenv (default: a temp dir).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        venv = pathlib.Path(args.venv) if args.venv else work / "labvenv"
        models = _run(
            [sys.executable, "-c", EXPORT, REPO / "configs" / "ci.py", work / "export"], cwd=REPO
        ).stdout.split()
        expected = {m: _score(sys.executable, m, work / "main.csv") for m in models}
        _run([sys.executable, "-m", "venv", "--clear", venv])
        python = venv / "bin" / "python"
        _run([python, "-m", "pip", "install", "-q", "-r", REPO / "requirements-lab.txt"])
        _run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", REPO])
        check = (
            f"import importlib.util as u; print([m for m in {NOT_IN_THE_LAB} if u.find_spec(m)])"
        )
        extra = _run([python, "-c", check]).stdout.strip()
        if extra != "[]":
            sys.exit(f"the light install holds {extra}: requirements-lab.txt pulls them in.")
        for model, csv in expected.items():
            got = _score(python, model, work / "lab.csv")
            if got != csv:
                diff = difflib.unified_diff(csv.splitlines(), got.splitlines(), "main", "lab")
                sys.exit(f"{model}: the light install scores differently:\n" + "\n".join(diff))
            rows = len(csv.splitlines()) - 1
            print(f"light install: {pathlib.Path(model).name} scores {rows} drops as the main env")


if __name__ == "__main__":
    main()

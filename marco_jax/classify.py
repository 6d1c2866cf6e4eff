"""Scores drop photographs with a trained MARCO model and writes one CSV row per image.

  python -m marco_jax.classify --workdir DIR [--checkpoint best|latest|N] [--raw_weights]
      PATH... --output scores.csv [--batch_size 16] [--tta] [--crystal_threshold X]
      [--saliency DIR] [--workers N] [--max_megapixels M] [--memory_gb G]
  python -m marco_jax.classify --model EXPORTED PATH... --output scores.csv [...]

PATH: image files, folders (scanned recursively) or text files listing paths (.txt/.lst/.list),
as `image_io.scan_inputs` describes. JPEG, PNG, TIFF, BMP; 8 or 16 bit; gray, RGB, RGBA,
palette, CMYK; the EXIF orientation is applied (`image_io.load_image`). Each image gets the
evaluation transform (center crop of `central_fraction` of the shorter side, resized to the
model's size: paper sections 2-3), so a file scores as the same picture would in evaluation.

Models: --workdir runs the JAX network of a training workdir (at --checkpoint; EMA weights unless
--raw_weights), jitted once for batches of exactly --batch_size images; --model runs an export of
`marco_jax.export` (OpenVINO .xml, .onnx, SavedModel directory or .tflite), the fast path on
CPUs, which carries its own image size and crop fraction. Scoring an export loads neither JAX nor
TensorFlow (for an IR or ONNX file): the light install of requirements-lab.txt runs it.
  --runtime: an IR runs on OpenVINO; an .onnx file on ONNX Runtime (auto) or on OpenVINO
    (--runtime openvino, which converts the file at each start: export --format openvino for
    the IR, which starts faster and can be int8).
  --precision (OpenVINO): f32 (default: the same probabilities on every CPU, equal to the JAX
    model's within 1e-4) or bf16 (OpenVINO's own default on CPUs with bfloat16 units: faster;
    probabilities moved by up to 0.007 on the trained test models, by 0.27 on a random network).
  --threads: the cores the model may use (default: all this process may run on); OpenVINO
    splits them into streams that each score one image of a batch (`serving.export.runtime`).
The images of a batch are read and cropped by --workers threads while the model scores the
previous one; the log's last INFO line says how the time was shared.

Output (`serving.engine`): path, prediction, p_<class> for each class, crystal_flag (with
--crystal_threshold: 1 when p_crystals >= X), error (why an unreadable file got no scores; the
run goes on). --tta averages the probabilities over the 8 flips/rotations of the square, which a
drop photograph has no preferred one of (paper section 3). --saliency DIR also writes, for each
scored image, the photograph beside the SmoothGrad heat map of its predicted class over a
grayscale copy, at the photograph's own resolution, with a colour bar (`serving.saliency`,
`serving.saliency_figure`, paper Fig 4), as DIR/<path relative to the inputs' common
folder>.png (e.g. DIR/plate7/A1.jpg.png). It needs the JAX network (--workdir) and is slow:
each of the --saliency_samples samples is a forward and a backward pass, about 6 forward
passes' time on a CPU (MARCO at 599 px, 2 cores: 0.16 s per image to score, 0.9 s per sample),
so keep it for the images you want to look at.

The CSV (`serving.csv_file`) is UTF-8 and safe to open in a spreadsheet: fields with a comma, quote,
CR or LF are quoted (RFC 4180), and a cell that a spreadsheet would run as a formula (starting
with = + - @, a tab or CR) starts with an apostrophe. It stays exact for a program: the path
cell is the path itself unless it starts with "'"; then drop the "'" and percent-decode the rest
to bytes, which are the file name (a name that is not UTF-8 is written that way, %E9 for a
Latin-1 e-acute):

  path = csv_file.path_from_cell(row["path"])  # or, without marco_jax:
  path = os.fsdecode(urllib.parse.unquote_to_bytes(cell[1:])) if cell[:1] == "'" else cell

Nothing is lost or destroyed: the output must not be an input (an image or list), and it and the
--saliency folder are written to before scoring starts, so an unwritable place fails at once.
Rows are written as they are scored to OUTPUT.partial beside the output, which is renamed over
the output when the run ends; after Ctrl-C or a disk error that file is kept and one line says
how many rows it holds and where.

Inputs: --max_megapixels refuses larger images unread (decompression bombs; raise it for trusted
files); --memory_gb bounds the memory the readers fill with decoded images at once (an
81-megapixel photograph needs about 0.7 GB), whatever --workers is. Folder entries that are not
scored (other extensions, hidden files) are counted in the summary line.

Exit codes: 0 every file scored; 3 some files could not be read (see the error column);
2 wrong arguments (one line naming the value and what to do); 4 the CSV or a heat map could not
be written (finished rows kept); 130 interrupted (finished rows kept); 1 a crash. --help exits 0.
The last line printed is "scored N, failed M, skipped K (...)".
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import flags, logging
from PIL import Image

from marco_jax import cli
from marco_jax.data import image_io
from marco_jax.serving import checks, csv_file, engine, predictors, saliency

EXIT_OUTPUT_FAILED = 4  # the CSV (or a heat map) could not be written; finished rows are kept
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it); finished rows are kept


EXAMPLE = "python -m marco_jax.classify --workdir /tmp/marco_synthetic plates/ --output s.csv"


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The command's flags, in `fv` (a private FlagValues runs the command inside a test)."""
    cli.define_workdir_flag(fv, "Training workdir whose checkpoint scores the images.")
    cli.define_checkpoint_flags(fv, "(with --workdir) the raw weights")
    flags.DEFINE_string(
        "model", None, "Exported model (OpenVINO .xml, .onnx, SavedModel dir, .tflite).",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_enum(
        "runtime", "auto", ["auto", "onnxruntime", "openvino"],
        "Runtime of an .onnx --model (auto: ONNX Runtime; an .xml runs on OpenVINO).",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_enum(
        "precision", "f32", ["f32", "bf16"],
        "OpenVINO's compute precision (bf16: faster where the CPU has it, less exact).",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "threads", None, "Cores the exported model may use (default: all usable).", flag_values=fv
    )
    flags.DEFINE_string("output", None, "CSV file to write, one row per input.", flag_values=fv)
    flags.DEFINE_integer(
        "batch_size", 16, "Images per model call (the last batch is padded).", flag_values=fv
    )
    flags.DEFINE_bool(
        "tta", False, "Average over the 8 flips/rotations (8x the compute).", flag_values=fv
    )
    flags.DEFINE_float(
        "crystal_threshold", None, "Adds crystal_flag = p_crystals >= this.", flag_values=fv
    )
    flags.DEFINE_string(
        "saliency", None, "Folder for SmoothGrad heat maps (needs --workdir).", flag_values=fv
    )
    flags.DEFINE_integer(
        "saliency_samples",
        saliency.DEFAULT_NUM_SAMPLES,
        "SmoothGrad noise samples per image.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "saliency_noise",
        saliency.DEFAULT_NOISE_FRACTION,
        "SmoothGrad noise std as a fraction of the image's value range.",
        flag_values=fv,
    )
    flags.DEFINE_integer("seed", 0, "Seed of the SmoothGrad noise.", flag_values=fv)
    flags.DEFINE_integer(
        "workers",
        engine.DEFAULT_NUM_WORKERS,
        "Threads reading and cropping images.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "max_megapixels",
        image_io.DEFAULT_MAX_PIXELS / 1e6,
        "Larger images are refused unread (decompression bombs); raise it for trusted files.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "memory_gb",
        engine.DEFAULT_MEMORY_BUDGET / 2**30,
        "Memory the readers may fill with decoded images at once, whatever --workers is.",
        flag_values=fv,
    )
    flags.mark_flags_as_required(["output"], flag_values=fv)


def _check_arguments(fv: flags.FlagValues, paths: Sequence[str]) -> None:
    if not paths:
        raise cli.ArgumentError("no PATH given: name image files, folders or list files.")
    if (fv.workdir is None) == (fv.model is None):
        raise cli.ArgumentError("pass exactly one of --workdir DIR and --model EXPORTED.")
    if fv.model is not None:
        for name in ("checkpoint", "raw_weights", "saliency"):
            if fv[name].present:
                raise cli.ArgumentError(
                    f"--{name} needs the JAX network: use it with --workdir, not --model."
                )
    else:
        for name in ("runtime", "precision", "threads"):
            if fv[name].present:
                raise cli.ArgumentError(
                    f"--{name} applies to an exported model: use it with --model, not --workdir."
                )
    if fv.threads is not None and fv.threads < 1:
        raise cli.ArgumentError(f"--threads must be >= 1, got {fv.threads}.")
    if fv.batch_size < 1:
        raise cli.ArgumentError(f"--batch_size must be >= 1, got {fv.batch_size}.")
    if fv.workers < 1:
        raise cli.ArgumentError(f"--workers must be >= 1, got {fv.workers}.")
    threshold = fv.crystal_threshold
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise cli.ArgumentError(f"--crystal_threshold must lie in [0, 1], got {threshold}.")
    if fv.saliency_samples < 1 or fv.saliency_noise < 0:
        raise cli.ArgumentError(
            f"--saliency_samples ({fv.saliency_samples}) must be >= 1 and --saliency_noise "
            f"({fv.saliency_noise}) >= 0."
        )
    if fv.max_megapixels <= 0 or fv.memory_gb <= 0:
        raise cli.ArgumentError(
            f"--max_megapixels ({fv.max_megapixels}) and --memory_gb ({fv.memory_gb}) must be > 0."
        )
    folder = os.path.dirname(os.path.abspath(fv.output))
    if os.path.isdir(fv.output) or not os.path.isdir(folder):
        raise cli.ArgumentError(
            f"--output {csv_file.display(fv.output)} must be a file in an existing folder "
            "(the CSV to write)."
        )


def main(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> int:
    """The command on parsed flags `fv` and positional PATHs argv[1:]; returns the exit code.

    Everything that can be checked is checked before scoring (arguments, inputs, the output
    and --saliency folders, the model); rows are then written as they are scored
    (`csv_file.CsvSink`).
    """
    sink = None
    try:
        _check_arguments(fv, argv[1:])
        inputs = image_io.scan_inputs(argv[1:])
        checks.check_output_is_not_an_input(fv.output, argv[1:], inputs.paths)
        header = engine.csv_header(fv.crystal_threshold)
        sink = csv_file.CsvSink(fv.output, header)  # the start-up probe of --output
        if fv.saliency is not None:
            checks.probe_folder(fv.saliency, "--saliency")
        model = None  # the NNX network, for saliency
        if fv.workdir is not None:
            from marco_jax.runs import store  # Orbax and JAX: only a checkpoint needs them

            loaded = store.load(fv.workdir, fv.checkpoint, use_ema=not fv.raw_weights)
            model, predictor = loaded.model, predictors.checkpoint_predictor(loaded)
        else:
            predictor = predictors.exported_predictor(
                fv.model,
                num_threads=fv.threads,
                runtime=None if fv.runtime == "auto" else fv.runtime,
                precision=fv.precision,
                # One stream for one image, up to one per core for a batch (runtime.py).
                batch_size=min(fv.batch_size, max(len(inputs.paths), 1)),
            )
    except (cli.ArgumentError, image_io.InputListError, csv_file.OutputError) as e:
        if sink is not None:
            sink.abandon()
        cli.fail(str(e))
    except BaseException:  # Ctrl-C or a crash while loading: nothing scored, nothing left
        if sink is not None:
            sink.abandon()
        raise
    max_pixels = int(fv.max_megapixels * 1e6)
    # Pillow's own guard (a warning at 1x, an error at 2x its limit) follows the flag.
    Image.MAX_IMAGE_PIXELS = max(max_pixels, image_io.DEFAULT_MAX_PIXELS)
    rows: list[engine.Row] = []
    stats = engine.ScoringStats()
    try:
        for row in engine.iter_scores(
            inputs.paths,
            predictor.predict,
            preprocessing=predictor.preprocessing,
            batch_size=fv.batch_size,
            tta=engine.ALL_TTA if fv.tta else (),
            num_workers=fv.workers,
            max_pixels=max_pixels,
            memory_budget=int(fv.memory_gb * 2**30),
            pad_batches=predictor.pad_batches,
            stats=stats,
        ):
            sink.write(engine.row_cells(row, fv.crystal_threshold))
            rows.append(row)
        sink.commit()
    except KeyboardInterrupt:
        sys.stderr.write(f"\ninterrupted: {sink.failure('interrupted')}\n")
        return EXIT_INTERRUPTED
    except OSError as e:
        failure = e if isinstance(e, csv_file.OutputError) else sink.failure(e)
        sys.stderr.write(f"error: writing the CSV failed: {failure}\n")
        return EXIT_OUTPUT_FAILED
    except Exception as e:  # a crash (exit 1, with its traceback): say where the rows are
        sys.stderr.write(f"error: {type(e).__name__} while scoring: {sink.failure(e)}\n")
        raise
    if fv.saliency is not None:
        from marco_jax.serving import saliency_maps  # JAX: only the checkpoint's network has maps

        try:
            written = saliency_maps.write_saliency_maps(
                rows,
                model,
                fv.saliency,
                preprocessing=predictor.preprocessing,
                num_samples=fv.saliency_samples,
                noise_fraction=fv.saliency_noise,
                seed=fv.seed,
            )
        except OSError as e:
            sys.stderr.write(
                f"error: writing a heat map under {csv_file.display(fv.saliency)} failed "
                f"({e.strerror or e}); the CSV {csv_file.display(fv.output)} is complete\n"
            )
            return EXIT_OUTPUT_FAILED
        logging.info("Wrote %d heat maps under %s", len(written), fv.saliency)
    logging.info(
        "%.1f images/s on %s; reading and cropping took %.0f%% of the CPU time (%.1f of %.1f s), "
        "the model %.1f s, waiting for images %.1f s",
        stats.to_json()["images_per_s"], predictor.about.get("runtime"), 100 * stats.read_share,
        stats.read_cpu_s, stats.cpu_s, stats.predict_s, stats.waiting_s,
    )  # fmt: skip
    print(engine.summary_line(rows, inputs.skipped_summary()))
    return engine.exit_code(rows)


def run() -> None:
    cli.run(main, define_flags, EXAMPLE)


if __name__ == "__main__":
    run()

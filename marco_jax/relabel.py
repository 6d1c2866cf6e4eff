"""The relabeling workflow of the paper (section 2, "Relabeling"): find the images the trained
model disagrees with most, have an expert look at them, and rebuild the dataset with the fixes.

1. Rank (train and test together, as in the paper):
     python -m marco_jax.relabel --workdir DIR [--fraction 0.05] [--splits train,test]
         [--checkpoint best|latest|STEP] [--out FOLDER] [--data_dir DIR]
   scores every image of the splits with the evaluation transform and writes into FOLDER
   (default DIR/relabel_<step>):
   - relabel.html, the labelling page, with images/ (each candidate's photograph, full size)
     and thumbnails/ beside it: open it in a browser, no server needed;
   - relabel_candidates.csv: the ceil(fraction * N) images with the highest disagreement, most
     disputed first: split, filename, source, label, original_label (the source's own score),
     predicted, p_label, p_pred, disagreement, and an empty corrected_label column.
   Disagreement = 1 - p(label), the probability the model gives to the other classes. It ranks
   the images exactly as their cross-entropy loss -log p(label) would, and is 0..1 to read.
2. The expert labels on the page: filter by confusion pair (e.g. label clear -> predicted
   crystals), click a picture for full size, press 1-4 (crystals, precipitate, clear, other) or
   click a class, then "Save corrected_labels.csv" (the browser's download). That file is the
   builder's `filename,label` format: put it in the manual directory of the `full` config of
   tfds_marco/marco and rebuild (or pass `MarcoConfig(corrected_labels=PATH)`). (A spreadsheet
   works too: fill corrected_label in relabel_candidates.csv.)
3. To add a round to an existing corrected_labels.csv (or convert a filled-in candidates CSV):
     python -m marco_jax.relabel --export_corrections SAVED.csv
         --out MANUAL_DIR/corrected_labels.csv
   Rows already in --out are kept unless the new file corrects the same image, so successive
   rounds accumulate.

Exit codes: 0 done; 2 wrong arguments or an invalid corrected_label, named on stderr.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from marco_jax import cli, parallel
from marco_jax.evaluation import relabel

EXAMPLE = "python -m marco_jax.relabel --workdir /tmp/marco_synthetic"


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.define_workdir_flag(fv, "Training workdir whose model ranks the dataset.")
    cli.define_checkpoint_flags(fv)
    flags.DEFINE_float(
        "fraction", relabel.DEFAULT_FRACTION, "Share of the images to list.", flag_values=fv
    )
    flags.DEFINE_list(
        "splits", list(relabel.DEFAULT_SPLITS), "Splits to rank together.", flag_values=fv
    )
    flags.DEFINE_string(
        "out",
        None,
        "Ranking: output folder (default WORKDIR/relabel_<step>). --export_corrections: the "
        "corrected-labels CSV to write.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "data_dir", None, "TFDS data_dir replacing the one in config.json.", flag_values=fv
    )
    flags.DEFINE_integer(
        "thumbnail_size", relabel.DEFAULT_THUMBNAIL_SIZE, "Thumbnail side, pixels.", flag_values=fv
    )
    flags.DEFINE_string(
        "export_corrections",
        None,
        "Corrections to merge into the builder's corrected_labels.csv (--out): the page's saved "
        "corrected_labels.csv, or a relabel_candidates.csv with corrected_label filled in.",
        flag_values=fv,
    )


def main(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.check_no_positional(argv)
    try:
        if fv.export_corrections is not None:
            if fv.out is None or fv.workdir is not None:
                raise cli.ArgumentError(
                    "--export_corrections CSV needs --out FILE (the corrected_labels.csv) and "
                    "no --workdir."
                )
            count = relabel.export_corrections(fv.export_corrections, fv.out)
            print(f"{count} corrected labels from {fv.export_corrections} in {fv.out}")
            return
        if fv.workdir is None:
            raise cli.ArgumentError("pass --workdir DIR (or --export_corrections CSV --out FILE).")
        parallel.initialize_distributed()
        result = relabel.find_candidates(
            fv.workdir,
            fraction=fv.fraction,
            splits=fv.splits,
            out=fv.out,
            checkpoint=fv.checkpoint,
            use_ema=not fv.raw_weights,
            data_dir=fv.data_dir,
            thumbnail_size=fv.thumbnail_size,
        )
    except cli.ArgumentError as e:
        cli.fail(str(e))
    if result["html"] is not None:
        print(result["html"])


def run() -> None:
    cli.run(main, define_flags, EXAMPLE)


if __name__ == "__main__":
    run()

"""The contact sheet of synthetic drops beside real photographs."""

from __future__ import annotations

from helpers import SHARED
from PIL import Image

from marco_jax.labels import NUM_CLASSES
from tfds_marco.marco import contact_sheet


def test_contact_sheet_cli_writes_a_small_png(tmp_path):
    out = tmp_path / "docs" / "sheet.png"
    real_dir = SHARED / "real_drops"
    contact_sheet.main(
        [
            "--contact-sheet",
            str(out),
            "--real-dir",
            str(real_dir),
            "--per-class",
            "2",
            "--tile",
            "48",
        ]
    )
    with Image.open(out) as sheet:
        assert sheet.format == "PNG"
        real_columns = 4 if real_dir.is_dir() else 0  # the sheet keeps room for 4 real ones
        assert sheet.width > (2 + real_columns) * 48 and sheet.height > NUM_CLASSES * 48
    assert out.stat().st_size < 500_000

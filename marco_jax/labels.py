"""The four MARCO outcome classes (paper section 2, "Labeling").

The order is the label index everywhere: TFDS ClassLabel, model logits, CSV columns.
"""

CLASS_NAMES: tuple[str, ...] = ("crystals", "precipitate", "clear", "other")
NUM_CLASSES: int = len(CLASS_NAMES)
CRYSTALS: int = CLASS_NAMES.index("crystals")

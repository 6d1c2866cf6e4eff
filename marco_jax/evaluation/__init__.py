"""The paper's evaluation (section 4): predictions over a split, metrics and the report."""

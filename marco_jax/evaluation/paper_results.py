"""The numbers Bruno et al. (PLOS ONE 2018) report, section 4 "Results", which the evaluation
report shows beside a run's: Tables 4, 5, 6 and the operating points Fig 3 quotes."""

from __future__ import annotations

PAPER_LABEL = "paper (real MARCO test set)"
# Section 4 "Classification": 94.5 % after relabeling.
PAPER_ACCURACY = 0.945
# Table 4, row-normalised confusion matrix (true label -> predicted label), as fractions.
PAPER_CONFUSION = {
    "crystals": {"crystals": 0.910, "precipitate": 0.058, "clear": 0.017, "other": 0.015},
    "precipitate": {"crystals": 0.008, "precipitate": 0.961, "clear": 0.023, "other": 0.007},
    "clear": {"crystals": 0.002, "precipitate": 0.018, "clear": 0.979, "other": 0.002},
    "other": {"crystals": 0.048, "precipitate": 0.197, "clear": 0.059, "other": 0.696},
}
# Table 5, std of each cell across data sources, as fractions.
PAPER_SPREAD = {
    "crystals": {"crystals": 0.05, "precipitate": 0.04, "clear": 0.01, "other": 0.01},
    "precipitate": {"crystals": 0.02, "precipitate": 0.04, "clear": 0.01, "other": 0.02},
    "clear": {"crystals": 0.01, "precipitate": 0.03, "clear": 0.05, "other": 0.01},
    "other": {"crystals": 0.07, "precipitate": 0.15, "clear": 0.06, "other": 0.21},
}
# Fig 3: one-vs-rest AUCs and the recalls it quotes at "less than" a false-positive rate.
PAPER_AUC = {"crystals": 0.988, "precipitate": 0.989}
PAPER_RECALL_AT_FPR = {
    "crystals": {0.016: 0.94, 0.19: 0.987},
    "precipitate": {0.034: 0.94, 0.25: 0.996},
}
# Table 6 is MARCO on CSIRO C3's independent 2018 images, not on the MARCO test set.
PAPER_C3_LABEL = "paper (CSIRO C3 independent set, Table 6)"
PAPER_C3 = {"precision": 0.7777, "recall": 0.8663, "accuracy": 0.9018}

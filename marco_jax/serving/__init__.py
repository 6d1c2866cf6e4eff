"""Scoring images for a lab: the scoring engine, its CSV, saliency maps and the exports. Imports
neither the training package nor clu; TensorFlow only for a SavedModel or TFLite export."""

"""MOSAIC on MedMNIST: multi-dataset training, official metrics, reports and predictions on image files."""

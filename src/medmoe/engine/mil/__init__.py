"""Multiple-instance learning: training, cross-validation, tuning, prediction, slide embeddings, tasks.

The public names are re-exported lazily by :mod:`medmoe.engine`; import the modules directly for the rest.
"""

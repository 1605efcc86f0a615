"""Datasets on disk: training photo folders, HPatches-format sequences, the epoch sampler."""

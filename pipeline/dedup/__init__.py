"""Duplicates inside the dataset: exact (same original bytes) and near (perceptual hash)."""

"""Synthetic data generation for streamrec."""

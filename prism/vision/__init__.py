"""Detectors shared by stages (text today); each loads its shipped model once per process."""

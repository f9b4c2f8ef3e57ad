"""Datasets: the Parquet + manifest format, converters, validation, and readers (in-memory and Ray Data).

Submodules are imported on demand so ``import i2m2_ray.data`` stays cheap (no Ray, no torch).
"""

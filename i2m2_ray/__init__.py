"""i2m2-ray: search and train I2M2 multimodal classifiers on a laptop or a Ray cluster."""

__version__ = "0.1.0"

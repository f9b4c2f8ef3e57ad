"""The search service: Ray Tune + Optuna over every variant, in the order the I2M2 method needs."""

"""User-facing errors: each carries one line that says what is wrong and where."""


class I2M2Error(Exception):
    """Base class for errors a user can fix (bad config, bad data, bad variant)."""


class ConfigError(I2M2Error):
    """A config file, override or variant name is invalid."""


class DataError(I2M2Error):
    """A dataset is missing, malformed or inconsistent with its manifest."""


class CheckpointError(I2M2Error):
    """A checkpoint or state dict does not match the model it is loaded into."""


class TrainingDiverged(I2M2Error):
    """The training loss became NaN or infinite: the run ends (a search goes on with other trials)."""

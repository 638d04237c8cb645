"""The exception hierarchy of detailsr.

Every error a user can cause (a bad file, a wrong checkpoint, an impossible setting) is a
`DetailSRError`; its message is one line that names the thing at fault and what was expected.
"""


class DetailSRError(Exception):
    """Base class of all errors detailsr raises on purpose."""


class CheckpointError(DetailSRError):
    """A checkpoint is missing, unreadable, corrupt, or does not fit any known architecture."""


class ImageError(DetailSRError):
    """An image cannot be read or written (not an image, truncated, too large, unwritable)."""


class ConfigError(DetailSRError):
    """An impossible setting: a scale the model does not have, a ratio outside [0, 1], ..."""


class TrainingError(DetailSRError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


class ModelNotFoundError(CheckpointError):
    """A zoo model is not in the local cache and cannot be downloaded."""


class UsageError(ConfigError):
    """A command-line value that cannot work (the command exits with 2, as for argparse's own errors)."""

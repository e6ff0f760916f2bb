"""facepipe: from a folder of photos to face groups and one aggregated face per group."""

__version__ = "0.1.0"

"""facepipe: from a folder of photos to face groups and one aggregated face per group.

The commands (``facepipe --help``) work on files; ``find_faces``, ``embed_faces``, ``group_faces`` and
``decode`` (``facepipe.api``) do the same on arrays in memory.
"""

__version__ = "0.1.0"

from facepipe.api import decode, embed_faces, find_faces, group_faces  # noqa: E402  (after __version__, which they import)

__all__ = ["__version__", "decode", "embed_faces", "find_faces", "group_faces"]

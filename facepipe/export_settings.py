"""The choices of export, in a module that imports nothing heavy (the command-line options read them)."""

EXPORT_MODES = ("hardlink", "symlink", "copy")  # how a photo enters its group's folder
XMP_NAMINGS = ("photo.jpg.xmp", "photo.xmp")  # export --xmp: the sidecar beside each photo, first the default

"""Choices, defaults and limits of the train-cvae and generate settings that are more than a number, in a
module that imports nothing heavy (the command-line options read them)."""

ALIGNMENTS = ("dlib5", "none")
DEFAULT_ALIGNMENT = "dlib5"
DEFAULT_ALIGN_PADDING = 0.5  # dlib's 0.25 shows brows to chin; 0.5 keeps the hair and the chin's outline
MAX_ALIGN_PADDING = 2.0
FACE_MASKS = ("landmarks", "none")  # landmarks: the crops over neutral grey through a mask of the face (crops.face_mask)
DEFAULT_FACE_MASK = "landmarks"
DECODER_BASES = ("mean", "none")  # mean: the decoder adds its output to the logits of the cluster's pixel mean
DEFAULT_DRAW_IDENTITY = 1.0  # the identity term on random draws, relative to its weight on the z = 0 faces
MAX_DRAW_IDENTITY = 100.0
DEFAULT_IDENTITY_JITTER = 1.0  # strength of the identity term's random views (identity.jittered); 0: one view
MAX_IDENTITY_JITTER = 3.0
# The identity term can see the faces blurred by a Gaussian of this many pixels of a 64-pixel face (scaled with
# the image size; cvae.model.gaussian_blurred): unblurred, its gradient through the network writes a fine
# cross-hatch into them. Off by default (benchmarks/README.md, issue 29: it also weakens the pull on the draws).
DEFAULT_IDENTITY_BLUR = 0.0
MAX_IDENTITY_BLUR = 8.0
DEFAULT_TEMPERATURE = 1.0  # generate's random draws: z ~ N(0, temperature^2 I)
MAX_TEMPERATURE = 10.0
MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 512  # side of the CVAE's faces; beyond this a CPU run takes days and a checkpoint gigabytes
MAX_LATENT_DIM = 1024
MAX_BASE_CHANNELS = 1024
MAX_EPOCHS = 100_000

"""The names a user chooses among: attention kernels, tile blends, evaluation protocols, image types.

Kept free of torch, OpenCV and numpy so that the command line can offer them (and answer `--help`)
without importing the libraries that do the work.
"""

ATTENTION_BACKENDS = ("naive", "sdpa")  # every attention site offers these
ALL_ATTENTION_BACKENDS = ("naive", "sdpa", "flex")  # ESC also offers flex_attention
BLENDS = ("feather", "average")
ROUTINGS = ("learned", "purepass")  # CAMixerSR: the predictor's windows, or those less the pure ones
PROTOCOLS = ("y", "rgb", "ws")
AUTO_RATIO = "auto"  # the ratio with which CAMixer's predictor sets K per image and layer
PRECISIONS = ("fp32", "fp16", "bf16")  # float32, float16, bfloat16: the network and its inputs

DEFAULT_MAX_PIXELS: int = 16384 * 16384
READ_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
WRITE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})

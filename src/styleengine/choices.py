"""Every choice a user can make, written once: the CLI, the engine and bench read them here.

Torch-free and import-free, so the CLI can build its help text without
loading torch or ONNX Runtime.
"""
from __future__ import annotations

# the network computes in float32: a weight or an input scale past these is infinite there, or 0
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32
MAX_LR = 1e30  # a learning rate below float32's top, with room for Adam's arithmetic on it
MODELS = ("vgg19", "vgg16")  # model/vgg.py has one layer table per name
POOLINGS = ("avg", "max")
BACKENDS = ("torch", "ort", "tensorrt")
PROVIDERS = ("cpu", "cuda", "tensorrt")  # ONNX Runtime execution providers, by short name
PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}
DEVICES = ("auto", "cpu", "cuda")  # kinds of device; "cuda:N" names one GPU (device_kind)
MAX_GPU_INDEX = 1023  # cuda:N past this is a typo, not a machine
# compute precision of the convolutions (losses and Grams always accumulate in fp32); which backend runs which
# where: engine/capability.py
PRECISIONS = ("fp32", "bf16", "fp16", "tf32")
# convolutions (engine/winograd.py for torch, export/winograd.py for the graphs): auto = Winograd for fp32 on
# the CPU
CONV_ALGOS = ("auto", "direct", "winograd")
GRAPH_PRECISIONS = ("fp32", "fp16", "bf16")  # what the ONNX exporter can emit
# ONNX Runtime's CUDA provider runs fp32 and fp16 step graphs, not bf16:
BF16_ON_ORT_CUDA = ("ONNX Runtime's CUDA provider has no bf16 kernels for the step's Resize and comparisons "
                    "(seen with onnxruntime-gpu 1.31.1 on an H200); use --precision fp16 (or the torch backend "
                    "for bf16)")
MIN_SIDE = 32  # px; smaller images have no conv5_1 features left after four poolings
# px; past this a side is a typo, not a picture: 65536^2 px is 48 GiB for the image alone, and a size this large
# made tune measure at its largest class and --style-scale 1e300 print a 600-digit size
MAX_SIDE = 65536
OPTIMIZERS = ("lbfgs", "adam")
LBFGS_HISTORY = 100  # curvature pairs L-BFGS keeps, as neural-style's -lbfgs_num_correction default
# randn: neural-style-pt's start, N(0, 0.001) in the network's input units (its mean pixel, a flat grey)
INITS = ("noise", "content", "style", "randn")  # or a path to an image
WEIGHT_WORDS = ("imagenet", "random")  # --weights words that name no file (or a path)
# the weights files model/weights.read_checkpoint reads, by suffix: safetensors, or a torch pickle
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
WEIGHT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
INIT_ALIASES = {"random": "noise", "image": "content"}  # neural-style's -init spellings
# how the loss terms are normalised (engine/losses.py): "invariant" makes the balance of content, style and
# TV independent of the pixel count; "paper" is Gatys et al.'s exact loss (content and TV summed over positions)
WEIGHTINGS = ("invariant", "paper")
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed and numpy take alike


def check_choice(what: str, value: str, options) -> None:
    """ConfigError naming the options when `value` is not one of them."""
    if value not in options:
        from styleengine.errors import ConfigError

        raise ConfigError(f"unknown {what} {value!r}; choose {', '.join(options)}")


def check_seed(seed: int) -> None:
    """ConfigError unless 0 <= seed <= MAX_SEED."""
    if not 0 <= seed <= MAX_SEED:
        from styleengine.errors import SettingError

        raise SettingError("seed", "seed", f"must be at least 0 and at most {MAX_SEED} (2**63 - 1), got {seed}")


def device_kind(device: str) -> str:
    """"cpu", "cuda" or "auto" of a device name ("cuda:1" -> "cuda"); ConfigError for anything else."""
    from styleengine.errors import ConfigError

    kind, colon, index = device.partition(":")
    if device in DEVICES or (kind == "cuda" and colon and index.isdigit() and index.isascii()
                             and int(index) <= MAX_GPU_INDEX):
        return kind
    raise ConfigError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N (N a GPU's index, 0-"
                      f"{MAX_GPU_INDEX})")


def gpu_index(device: str) -> int:
    """The GPU's index of a cuda device name: cuda:N -> N, cuda -> 0 (torch's current one)."""
    return int(device.partition(":")[2] or 0)

"""neural-style's and neural-style-pt's single-dash flags and what they are here (torch-free).

cli.py reads this when click refuses an option, so `-num_iterations 500` is
one line naming --iters instead of "No such option: -n"; the README's
"Coming from neural-style" table says the same.
"""
from __future__ import annotations

import sys

# their flag -> ours (a flag, or where the value goes)
FLAGS: dict[str, str] = {
    "-content_image": "the CONTENT argument (styleengine run CONTENT STYLE... -o OUT)",
    "-style_image": "the STYLE arguments after CONTENT (several, a comma-separated list or a folder)",
    "-style_blend_weights": "--style-blend",
    "-output_image": "-o/--output",
    "-image_size": "--size",
    "-gpu": "--device",
    "-content_weight": "--content-weight (in neural-style-pt's units with --recipe neural-style-pt)",
    "-style_weight": "--style-weight (in neural-style-pt's units with --recipe neural-style-pt)",
    "-tv_weight": "--tv-weight (in neural-style-pt's units with --recipe neural-style-pt)",
    "-normalize_weights": "--normalize-weights",
    "-normalize_gradients": "--normalize-gradients",
    "-num_iterations": "--iters",
    "-init": "--init (random or image)",
    "-init_image": "--init PATH",
    "-optimizer": "--optimizer",
    "-learning_rate": "--lr",
    "-lbfgs_num_correction": "--lbfgs-history",
    "-print_iter": "--print-every",
    "-save_iter": "--save-every",
    "-style_scale": "--style-scale",
    "-original_colors": "--preserve-colors",
    "-pooling": "--pooling",
    "-model_file": "--weights",
    "-seed": "--seed",
    "-content_layers": "--content-layers",
    "-style_layers": "--style-layers",
    "-backend": "--backend and --conv (measured by default)",
    "-cudnn_autotune": "nothing: auto settings are measured once per machine ('styleengine tune')",
}


def peer_flag(args: list[str] | None = None) -> str | None:
    """The first of `args` (default: the command line) that is one of the peers' flags, '=value' cut off."""
    for arg in sys.argv[1:] if args is None else args:
        name = arg.split("=", 1)[0]
        if name in FLAGS:
            return name
    return None


def did_you_mean(name: str) -> str:
    return f"{name} is neural-style's flag; here it is {FLAGS[name]}"

"""Write a freshly initialised (untrained) model from a recipe, for trying the command line
before a trained model exists:  python tools/init_model.py recipes/tiny.yaml exp/tiny_init
"""
from __future__ import annotations

import argparse
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the model from the recipe, save_pretrained it; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="recipe YAML, e.g. recipes/tiny.yaml")
    parser.add_argument("out", help="directory to write config.json and model.safetensors into")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    args = parser.parse_args(argv)

    from codec import Codec
    from codec.recipe import ConfigError

    torch.manual_seed(args.seed)
    try:
        model = Codec.from_config(args.recipe)
    except (ConfigError, ValueError) as exc:
        print(f"init_model: error: {exc}", file=sys.stderr)
        return 2
    model.eval().save_pretrained(args.out)
    print(f"{args.out}: {model.num_stages} stages, {model.bitrate() / 1000:g} kbps nominal, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters (untrained)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Plumbing every layer above may use: command-line flags and one-line errors (``cli``), checkpoints,
devices, seeding, atomic files and curve PNGs (``runtime``), and H.264 videos, GIFs and images (``video``).

May import only :mod:`car_racing.models` (``runtime`` rebuilds models from a checkpoint's ``model_args``);
torch is imported inside the functions that need it, so a script's ``--help`` never loads it.
"""

"""Make small, shippable copies of the three checkpoints (what the repo's ``checkpoints/pretrained/*/`` hold).

Training checkpoints carry what a resumed run needs: Adam moments (2× the weights), CMA-ES's covariance
(tens of MB), RNG states. A shipped checkpoint needs only the weights and what explains them, so this
keeps ``kind``, ``model_args``, ``model_state`` (floating-point tensors stored as float16 with
``--half``; models load them back into float32) and the small metadata (config, epoch / generation,
losses and scores, history, warm-start summary), and drops the resume state. The result drives the
simulator and the visualisations; it cannot be resumed (train from scratch, or from your own run).

The memory checkpoint names the vision checkpoint it was trained on by sha256 (the controller stage
checks it); the export points it at the exported V and keeps the original in ``exported.source``.

    python car_racing/export_checkpoints.py --source-dir runs/full/checkpoints --out-dir checkpoints/pretrained/default --half
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import copy
from dataclasses import dataclass
from typing import Any

from car_racing.common.cli import run_main
from car_racing.common.runtime import CHECKPOINT_FILES, checkpoint_paths, load_checkpoint, load_model, save_checkpoint

# resume-only state: never needed to drive or to look at the models
DROPPED_KEYS = ("optimizer_state", "es_state", "rng", "rng_state", "best_params", "checked", "cma_mean")


@dataclass
class Args:
    """Write stripped (optionally float16) copies of the vision, memory and controller checkpoints."""
    source_dir: str = "checkpoints"
    """folder with the trained vision_model.pth, memory_model.pth and control_model_cmaes.pth"""
    out_dir: str = "checkpoints/export"
    """where the stripped copies go (the same file names; may equal --source-dir: files are replaced atomically);
    a shipped agent is written with e.g. --out-dir checkpoints/pretrained/dream (the only tool that writes there)"""
    half: bool = True
    """store floating-point weights as float16 (halves the size; models compute in float32 after loading)"""


def strip_checkpoint(checkpoint: dict[str, Any], half: bool) -> dict[str, Any]:
    """A copy without :data:`DROPPED_KEYS`; ``model_state``'s float tensors in float16 with ``half``."""
    stripped = {key: copy.deepcopy(value) for key, value in checkpoint.items()
                if key not in DROPPED_KEYS and key != "model_state"}
    stripped["model_state"] = {name: (tensor.half() if half and tensor.is_floating_point() else tensor).clone()
                               for name, tensor in checkpoint["model_state"].items()}
    return stripped


def main(args: Args) -> dict[str, Path]:
    from car_racing.recording.latent_cache import file_sha256

    source, out = checkpoint_paths(args.source_dir), checkpoint_paths(args.out_dir)
    kinds = ("vision", "memory", "controller")  # V first: M's reference is rewritten to the exported V
    checkpoints = {kind: load_checkpoint(source[kind], kind) for kind in kinds}  # all checked before writing
    sources = {kind: {"path": str(source[kind]), "sha256": file_sha256(source[kind])} for kind in kinds}
    for kind in kinds:
        stripped = strip_checkpoint(checkpoints[kind], args.half)
        stripped["exported"] = {"source": sources[kind], "dtype": "float16" if args.half else "float32",
                                "dropped": [key for key in DROPPED_KEYS if key in checkpoints[kind]]}
        if kind == "memory" and "vision" in stripped:
            stripped["vision"] = {**stripped["vision"], "sha256": file_sha256(out["vision"])}
        if kind == "controller" and "models" in stripped:
            stripped["models"] = {k: {"path": str(out[k]), "sha256": file_sha256(out[k])} for k in ("vision", "memory")}
        save_checkpoint(stripped, out[kind])
        load_model(out[kind], kind)  # the copy must rebuild its model (one-line error otherwise)
        size = out[kind].stat().st_size
        print(f"{kind}: {source[kind]} ({source[kind].stat().st_size / 2**20:.1f} MiB) → {out[kind]} "
              f"({size / 2**20:.2f} MiB)")
    total = sum(out[kind].stat().st_size for kind in kinds)
    print(f"total {total / 2**20:.2f} MiB in {args.out_dir} ({', '.join(CHECKPOINT_FILES[k] for k in kinds)})")
    return out


if __name__ == "__main__":
    run_main(main, Args)

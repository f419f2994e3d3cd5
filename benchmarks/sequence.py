"""Sequences: joint-angle continuity and mesh error, `--sequence` beside independent per-frame conversion.

A smooth synthetic motion with a Z-up root (AMASS convention) that turns 360° and so passes the
pelvis through gimbal lock (`fitting.motion.synthetic_motion`), converted on both stand-in
families (A and B, or --models-dir) twice in the same run: every frame independently
(`Converter.convert`, the baseline) and as a sequence (`fitting.sequence.convert_sequence`).
Prints per family and forward lean (0° passes the lock exactly, 10° and 20° pass beside it):
the largest SMPL joint step, the bound 2 × that + 5°, the largest DOF step of each result, the
pelvis's closest approach to lock, mean and worst per-frame change of the mean vertex error
(sequence − independent, mm), and the time the sequence pass adds (ratio to the independent run).

Usage: python benchmarks/sequence.py [--frames 120] [--threads 2] [--shared-betas]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from skelpgt.fitting.convert import ConvertConfig, Converter
from skelpgt.fitting.motion import smpl_rotation_steps, synthetic_motion
from skelpgt.fitting.sequence import SequenceConfig, convert_sequence


def measure(converter: Converter, frames: int, lean: float, shared_betas: bool) -> str:
    """One table row for one family and lean."""
    pose, trans = synthetic_motion(frames, seed=0, forward_lean_deg=lean)
    betas = torch.zeros(10)
    start = time.perf_counter()
    independent = converter.convert(pose, betas, trans)
    t_ind = time.perf_counter() - start
    start = time.perf_counter()
    seq = convert_sequence(converter, pose, betas, trans, SequenceConfig(shared_betas=shared_betas), independent=independent)
    t_seq = time.perf_counter() - start
    smpl_step = float(smpl_rotation_steps(pose).max().rad2deg())
    step = lambda q: float((q[1:] - q[:-1]).abs().max().rad2deg())  # noqa: E731
    lock = float(torch.rad2deg(torch.arcsin(independent.poses[:, 1].cos().abs().min())))  # pelvis q1's closest approach to ±90°
    d = (seq.pve_mean - independent.pve_mean) * 1000
    bound = 2 * smpl_step + 5
    ok = "yes" if step(seq.poses) <= bound else "NO"
    return (
        f"{lean:>5.0f} {smpl_step:>9.2f} {bound:>7.2f} {step(independent.poses):>10.1f} {step(seq.poses):>9.1f} {ok:>4} {lock:>9.2f} "
        f"{independent.pve_mean.mean() * 1000:>8.2f} {seq.pve_mean.mean() * 1000:>8.2f} {d.mean():>+8.3f} {d.max():>+8.3f} "
        f"{frames / t_ind:>8.1f} {t_seq / t_ind:>7.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shared-betas", action="store_true")
    ap.add_argument("--models-dir", type=Path, default=None, help="Real models instead of the two stand-in families.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header = (
        f"{'lean':>5} {'smpl step':>9} {'bound':>7} {'indep step':>10} {'seq step':>9} {'ok':>4} {'lock dist':>9} "
        f"{'indep mm':>8} {'seq mm':>8} {'Δ mean':>8} {'Δ worst':>8} {'frames/s':>8} {'+time':>7}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if args.models_dir is not None:
            families = {"given": args.models_dir}
        else:
            from skelpgt.fitting.synthetic import make_synthetic_models

            families = {f: make_synthetic_models(Path(tmp) / f, tiny=True, family=f) for f in ("A", "B")}
        print(f"{args.frames} frames, 360° turn about the world's z, Z-up root; degrees unless marked; Δ = sequence − independent pve_mean per frame (mm)")
        for family, models in families.items():
            converter = Converter.from_models_dir(models, ConvertConfig())
            print(f"\nfamily {family}\n{header}")
            for lean in (0.0, 10.0, 20.0):
                print(measure(converter, args.frames, lean, args.shared_betas), flush=True)


if __name__ == "__main__":
    main()

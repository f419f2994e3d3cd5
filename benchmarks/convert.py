"""SMPL→SKEL conversion: `fast` beside the `staged-lbfgs` baseline, same people, same run.

Run on both families of synthetic stand-ins (A and B, independent constructions; or one
--models-dir), so no accuracy figure rests on the models the converter was developed on.
Two input sets from a seed per family:
  (a) round trip: SKEL meshes of random within-limit SKEL poses and shapes, used as the SMPL-topology
      target meshes (known answer);
  (b) SMPL poses sampled broadly (plausible per-joint ranges, 25% hard: deep squats, arms overhead,
      twisted spines, kicks, bows), neutral SMPL shapes → SKEL male.
Prints per family, method and set: fits/s, pve_mean mean/median/p95/max (mm), % pve_max > 60 mm,
mean joint-limit violation (deg); then per family the fast − baseline mean error on the same people,
the fast/baseline speed ratio and fast's LM iterations per person. `--stream N` also converts N people
in chunks and prints the peak RSS after each 10% (flat = bounded memory).

Usage: python benchmarks/convert.py [--n 256] [--baseline-n 16] [--families A B] [--sets round-trip smpl-poses]
       [--threads 2] [--stream 0]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import torch

from skelpgt.datasets.poses import sample_skel_poses, sample_smpl_poses
from skelpgt.fitting.convert import ConvertConfig, Converter
from skelpgt.fitting.skel import SKEL
from skelpgt.fitting.smpl import load_smpl


def input_sets(skel: SKEL, n: int, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """The two benchmark sets as converter keyword arguments."""
    g = torch.Generator().manual_seed(seed)
    q = sample_skel_poses(n, seed)
    betas = torch.randn(n, 10, generator=g)
    trans = torch.randn(n, 3, generator=g) * 0.3
    with torch.no_grad():
        verts = torch.cat([skel(q[i : i + 64], betas[i : i + 64], trans[i : i + 64]).skin_verts for i in range(0, n, 64)])
    pose = sample_smpl_poses(n, seed + 1, hard_fraction=0.25)
    smpl_betas = torch.randn(n, 10, generator=g) * 0.8
    return {"round-trip": {"vertices": verts}, "smpl-poses": {"pose": pose, "betas": smpl_betas}}


def run(converter: Converter, inputs: dict[str, torch.Tensor], n: int) -> tuple[float, object]:
    """Fits/s and the result for the first n people of a set."""
    subset = {k: v[:n] for k, v in inputs.items()}
    start = time.perf_counter()
    result = converter.convert(**subset)
    return n / (time.perf_counter() - start), result


def row(method: str, name: str, fits: float, r) -> str:
    pm = r.pve_mean[r.converged] * 1000
    bad = (r.pve_max[r.converged] > 0.06).float().mean() * 100
    return (
        f"{method:<13} {name:<11} {len(r.converged):>5} {fits:>8.2f} {pm.mean():>8.2f} {pm.median():>8.2f} "
        f"{pm.quantile(0.95):>8.2f} {pm.max():>8.2f} {bad:>7.1f}% {r.limit_violation[r.converged].mean():>8.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=None, help="one real/other models directory instead of the stand-in families")
    parser.add_argument("--families", nargs="+", default=["A", "B"], help="stand-in families to build and run")
    parser.add_argument("--sets", nargs="+", default=["round-trip", "smpl-poses"], help="input sets to run")
    parser.add_argument("--n", type=int, default=256, help="people per set for fast")
    parser.add_argument("--baseline-n", type=int, default=16, help="people per set for the baseline (≈7 s each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stream", type=int, default=0, help="also stream this many people and report RSS")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.models_dir is not None:
        dirs = {"given": args.models_dir}
    else:
        from skelpgt.fitting.synthetic import make_synthetic_models

        dirs = {f: make_synthetic_models(tempfile.mkdtemp(prefix=f"skelpgt-bench-{f}-"), family=f) for f in args.families}
    print(f"threads={args.threads} fast chunk=256; baseline on the first {args.baseline_n} people of each set")
    summary = []
    for family, models_dir in dirs.items():
        smpl, skel = load_smpl(models_dir, "neutral"), SKEL.from_file(models_dir, "male")
        fast = Converter(smpl, skel, ConvertConfig(method="fast", chunk_size=256))
        fast_sub = Converter(smpl, skel, ConvertConfig(method="fast", chunk_size=args.baseline_n))
        base = Converter(smpl, skel, ConvertConfig(method="staged-lbfgs", chunk_size=args.baseline_n))
        sets = {k: v for k, v in input_sets(skel, args.n, args.seed).items() if k in args.sets}
        fast.convert(**{k: v[:8] for k, v in next(iter(sets.values())).items()})  # warm-up
        print(f"\nfamily {family} ({models_dir})")
        print(f"{'method':<13} {'set':<11} {'n':>5} {'fits/s':>8} {'pve mean':>8} {'median':>8} {'p95':>8} {'max':>8} {'>60mm':>8} {'viol°':>8}")
        for name, inputs in sets.items():
            fits, r = run(fast, inputs, args.n)
            print(row("fast", name, fits, r), flush=True)
            fits_sub, r_sub = run(fast_sub, inputs, args.baseline_n)
            base_fits, rb = run(base, inputs, args.baseline_n)
            print(row("fast", name + "*", fits_sub, r_sub), flush=True)
            print(row("staged-lbfgs", name + "*", base_fits, rb), flush=True)
            both = r_sub.converged & rb.converged
            gap = (r_sub.pve_mean[both].mean() / rb.pve_mean[both].mean() - 1) * 100
            summary.append(f"family {family} {name:<11} fast − baseline mean pve {gap:+.1f}% (same {int(both.sum())} people); speed ratio fast/baseline {fits / base_fits:.0f}x")
    cfg = ConvertConfig()
    print(f"\nfast: {cfg.lm_iterations} LM iterations on the vertex subset + {cfg.polish_iterations} robust LM iterations on the uniform vertex sample, every person")
    print("\n".join(summary))
    print("(* = the baseline's subset, same people)")
    if args.stream:
        stream(fast, args.stream, args.seed)


def stream(converter: Converter, total: int, seed: int) -> None:
    """Convert `total` people chunk by chunk and print the peak RSS as it goes."""
    step = max(256, total // 10)
    done = 0
    while done < total:
        n = min(step, total - done)
        pose = sample_smpl_poses(n, seed + done)
        converter.convert(pose, torch.zeros(n, 10))
        done += n
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"streamed {done:>7} people, peak RSS {peak_mb:.0f} MB", flush=True)


if __name__ == "__main__":
    main()

"""SKEL forward throughput beside smplx's SMPL forward on the same 6890-vertex mesh, same run.

Prints, per batch size, the time per sample of each and the ratio SKEL/SMPL (target ≤ 1.5).
Usage: python benchmarks/skel_forward.py [--models-dir DIR] [--batches 1 64 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from skelpgt.fitting.skel import SKEL
from skelpgt.fitting.smpl import load_smpl, smpl_forward


def best_time(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up call (the least noisy estimate)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=None, help="models directory (default: fresh synthetic stand-ins)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--backward", action="store_true", help="time forward + backward instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models_dir = args.models_dir
    if models_dir is None:
        from skelpgt.fitting.synthetic import make_synthetic_models

        models_dir = make_synthetic_models(tempfile.mkdtemp(prefix="skelpgt-bench-"))
    skel = SKEL.from_file(models_dir, gender="male")
    smpl = load_smpl(models_dir, gender="male")
    print(f"threads={args.threads}  mode={'forward+backward' if args.backward else 'forward'}  models={models_dir}")
    print(f"{'batch':>6} {'SMPL ms/sample':>15} {'SKEL ms/sample':>15} {'SKEL/SMPL':>10}")
    for b in args.batches:
        g = torch.Generator().manual_seed(b)
        q, betas, trans = torch.randn(b, 46, generator=g) * 0.3, torch.randn(b, 10, generator=g), torch.randn(b, 3, generator=g)
        pose = torch.randn(b, 72, generator=g) * 0.3
        if args.backward:
            for t in (q, betas, pose):
                t.requires_grad_(True)

            def run_skel():
                skel(q, betas, trans).skin_verts.sum().backward()

            def run_smpl():
                smpl_forward(smpl, pose, betas, trans)[0].sum().backward()
        else:

            @torch.no_grad()
            def run_skel():
                skel(q, betas, trans)

            @torch.no_grad()
            def run_smpl():
                smpl_forward(smpl, pose, betas, trans)

        repeats = max(3, args.repeats if b < 128 else args.repeats // 2)
        t_smpl = best_time(run_smpl, repeats) / b
        t_skel = best_time(run_skel, repeats) / b
        print(f"{b:>6} {t_smpl * 1e3:>15.3f} {t_skel * 1e3:>15.3f} {t_skel / t_smpl:>9.2f}x")


if __name__ == "__main__":
    main()

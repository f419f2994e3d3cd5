"""Converter and SKELify on the CPU and on CUDA, side by side in one run.

Per stand-in family (A and B, independent constructions; or one --models-dir) the same people are
fitted on the CPU and on CUDA. Prints, per fitter: fits/s on each device and their ratio, the
largest difference between the two results (poses rad, β, translation m, fitted mesh m, kp2d_err),
and CUDA fits/s with one chunk that fills a GPU (--gpu-chunk people) with the largest difference
of the shared people against the small chunks. Without CUDA it prints the CPU numbers and says
CUDA is not available (exit 0).

Usage: python benchmarks/device.py [--n 64] [--skelify-n 256] [--gpu-chunk 4096] [--families A B] [--threads 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from skelpgt.datasets.poses import sample_skel_poses, sample_smpl_poses
from skelpgt.fitting.camera import project
from skelpgt.fitting.convert import ConvertConfig, Converter
from skelpgt.fitting.keypoints import KeypointRegressor
from skelpgt.fitting.skel import SKEL
from skelpgt.fitting.skelify import Skelify
from skelpgt.fitting.smpl import load_smpl

SKELIFY_BATCH = 64  # the refine round's default batch
CONVERT_CHUNK = 256  # the converter's default chunk


def smpl_people(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Broad SMPL poses (25 % hard) and shapes, converter keyword arguments."""
    g = torch.Generator().manual_seed(seed)
    return {"pose": sample_smpl_poses(n, seed, hard_fraction=0.25), "betas": torch.randn(n, 10, generator=g) * 0.8}


def keypoint_people(skelify: Skelify, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Crop-camera keypoints (n,44,3) of known SKEL people and a perturbed start (q, β), on the CPU."""
    g = torch.Generator().manual_seed(seed)
    q = sample_skel_poses(n, seed) * 0.6
    q[:, :3] = torch.tensor([3.14159, 0.0, 0.0]) + torch.randn(n, 3, generator=g) * 0.2  # upright under the y-down camera
    betas = torch.randn(n, 10, generator=g) * 0.5
    t = torch.tensor([0.0, 0.0, 40.0]) + torch.randn(n, 3, generator=g) * torch.tensor([0.05, 0.05, 2.0])
    kp = torch.cat([skelify.model_keypoints(q[i : i + 256], betas[i : i + 256]).cpu() for i in range(0, n, 256)])
    kp = torch.cat((project(kp, t), torch.ones(n, 44, 1)), dim=-1)
    return {"kp": kp, "q": q + torch.randn(q.shape, generator=g) * 0.1, "betas": betas + torch.randn(betas.shape, generator=g) * 0.2}


def timed(fn, device: torch.device):
    """(seconds, result) of fn(), waiting for the device's queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def convert(converter: Converter, people: dict[str, torch.Tensor], n: int):
    return timed(lambda: converter.convert(**{k: v[:n] for k, v in people.items()}), converter.device)


def skelify_fit(skelify: Skelify, people: dict[str, torch.Tensor], n: int, batch: int):
    """Fits of the first n people in batches, joined on the CPU."""

    def run():
        parts = [skelify.fit(people["kp"][a : min(a + batch, n)], people["q"][a : min(a + batch, n)], people["betas"][a : min(a + batch, n)]) for a in range(0, n, batch)]
        return {f: torch.cat([getattr(p, f).cpu() for p in parts]) for f in ("poses", "betas", "cam_t", "kp2d_err")}

    return timed(run, skelify.device)


def params(result, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(poses, betas, trans) of the first n people of a conversion result."""
    return result.poses[:n], result.betas[:n], result.trans[:n]


def mesh_gap(skel: SKEL, a: tuple, b: tuple) -> float:
    """Largest vertex distance (m) between the SKEL meshes of two (poses, betas, trans) (CPU, chunks of 64)."""
    worst = 0.0
    with torch.no_grad():
        for i in range(0, len(a[0]), 64):
            va, vb = (skel(*(x[i : i + 64] for x in r)).skin_verts for r in (a, b))
            worst = max(worst, float((va - vb).norm(dim=-1).max()))
    return worst


def gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.cpu() - b.cpu()).abs().nan_to_num(0.0).max())


def family(name: str, models_dir: str, args, cuda: torch.device | None) -> list[str]:
    smpl, skel, keypoints = load_smpl(models_dir, "neutral"), SKEL.from_file(models_dir), KeypointRegressor.from_models_dir(models_dir)
    config = ConvertConfig(chunk_size=CONVERT_CHUNK)
    total = max(args.n, args.gpu_chunk) if cuda else args.n
    people = smpl_people(total, args.seed)
    cpu_conv = Converter(smpl, skel, config, keypoints)
    convert(cpu_conv, people, 2)  # warm-up, as on CUDA
    secs, cpu_res = convert(cpu_conv, people, args.n)
    lines = [f"{name} converter   cpu {args.n / secs:9.1f} fits/s ({args.n} people, chunk {CONVERT_CHUNK})"]
    cpu_sk = Skelify(skel, keypoints)
    fastest = Skelify(skel, keypoints, device=cuda) if cuda else cpu_sk
    total_s = max(args.skelify_n, args.gpu_chunk) if cuda else args.skelify_n
    kp_people = keypoint_people(fastest, total_s, args.seed + 1)
    skelify_fit(cpu_sk, kp_people, 8, 8)  # warm-up
    secs_s, cpu_fit = skelify_fit(cpu_sk, kp_people, args.skelify_n, SKELIFY_BATCH)
    sk_lines = [f"{name} skelify     cpu {args.skelify_n / secs_s:9.1f} fits/s ({args.skelify_n} people, batches of {SKELIFY_BATCH})"]
    if cuda is None:
        return lines + sk_lines
    gpu_conv = Converter(smpl, skel, config, keypoints, device=cuda)
    convert(gpu_conv, people, 8)  # warm-up: CUDA context, kernels, cuBLAS handles
    g_secs, gpu_res = convert(gpu_conv, people, args.n)
    big = Converter(smpl, skel, ConvertConfig(chunk_size=args.gpu_chunk), keypoints, device=cuda)
    b_secs, big_res = convert(big, people, args.gpu_chunk)
    lines += [
        f"{name} converter  cuda {args.n / g_secs:9.1f} fits/s (same people): ×{secs / g_secs:.1f} vs cpu; "
        f"max |Δ| cpu–cuda: poses {gap(cpu_res.poses, gpu_res.poses):.2e} rad, β {gap(cpu_res.betas, gpu_res.betas):.2e}, "
        f"trans {gap(cpu_res.trans, gpu_res.trans):.2e} m, pve_mean {gap(cpu_res.pve_mean, gpu_res.pve_mean):.2e} m, mesh {mesh_gap(skel, params(cpu_res), params(gpu_res)):.2e} m",
        f"{name} converter  cuda {args.gpu_chunk / b_secs:9.1f} fits/s (one chunk of {args.gpu_chunk}): ×{(args.gpu_chunk / b_secs) / (args.n / secs):.1f} vs cpu; "
        f"max |Δ| vs chunk {CONVERT_CHUNK} on the first {args.n}: mesh {mesh_gap(skel, params(gpu_res), params(big_res, args.n)):.2e} m, "
        f"poses {gap(gpu_res.poses, big_res.poses[: args.n]):.2e} rad",
    ]
    gpu_sk = fastest
    skelify_fit(gpu_sk, kp_people, 8, 8)  # warm-up
    g_secs_s, gpu_fit = skelify_fit(gpu_sk, kp_people, args.skelify_n, SKELIFY_BATCH)
    b_secs_s, big_fit = skelify_fit(gpu_sk, kp_people, args.gpu_chunk, args.gpu_chunk)
    n = args.skelify_n
    sk_lines += [
        f"{name} skelify    cuda {n / g_secs_s:9.1f} fits/s (same people): ×{secs_s / g_secs_s:.1f} vs cpu; "
        f"max |Δ| cpu–cuda: poses {gap(cpu_fit['poses'], gpu_fit['poses']):.2e} rad, β {gap(cpu_fit['betas'], gpu_fit['betas']):.2e}, "
        f"cam_t {gap(cpu_fit['cam_t'], gpu_fit['cam_t']):.2e} m, kp2d_err {gap(cpu_fit['kp2d_err'], gpu_fit['kp2d_err']):.2e}",
        f"{name} skelify    cuda {args.gpu_chunk / b_secs_s:9.1f} fits/s (one batch of {args.gpu_chunk}): ×{(args.gpu_chunk / b_secs_s) / (n / secs_s):.1f} vs cpu; "
        f"max |Δ| vs batches of {SKELIFY_BATCH} on the first {n}: poses {gap(gpu_fit['poses'], big_fit['poses'][:n]):.2e} rad, "
        f"kp2d_err {gap(gpu_fit['kp2d_err'], big_fit['kp2d_err'][:n]):.2e}",
    ]
    return lines + sk_lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=None, help="one real/other models directory instead of the stand-in families")
    parser.add_argument("--families", nargs="+", default=["A", "B"], help="stand-in families to build and run")
    parser.add_argument("--n", type=int, default=64, help="people converted on both devices")
    parser.add_argument("--skelify-n", type=int, default=256, help="people SKELify fits on both devices")
    parser.add_argument("--gpu-chunk", type=int, default=4096, help="people in one CUDA chunk / batch (fills a GPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.device("cuda", 0) if torch.cuda.is_available() else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          + (f"CUDA: {torch.cuda.get_device_name(cuda)}" if cuda else f"CUDA is not available (torch CUDA build: {torch.version.cuda}): CPU numbers only"))  # fmt: skip
    if args.models_dir is not None:
        dirs = {"given": args.models_dir}
    else:
        from skelpgt.fitting.synthetic import make_synthetic_models

        tmp = tempfile.mkdtemp(prefix="device-bench-")
        dirs = {f: str(make_synthetic_models(f"{tmp}/{f}", tiny=True, family=f)) for f in args.families}
    for name, path in dirs.items():
        for line in family(name, path, args, cuda):
            print(line, flush=True)


if __name__ == "__main__":
    main()

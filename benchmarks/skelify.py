"""SKELify beside HSMR's refiner setting, same people, same run; one refinement round vs the converter.

Samples: a synthetic HMR2.0-format dataset (`skelpgt.datasets.synthetic`, exact 2D keypoints of
known SMPL people) on the full-size synthetic stand-ins (or --models-dir), converted by the fast
converter into round-0 labels (orig + flip) and released, as the refinement tests build it.

(1) Fits at batch 64: the orig side of the first --n-fit labelled people. Target: their 2D
    keypoints (normalised crop units); start: the round-0 label with regressor-like noise
    (q ± --start-noise rad, β ± 0.3) and the closed-form camera of that start, the same for both:
    * skelify: ours (per-sample Levenberg–Marquardt, `SkelifyConfig()` defaults) through HSMR's
      crop camera; skelify-persp: the same through the dataset's own camera (dataset.json
      intrinsics in normalised crop units, as a round with camera='source' uses);
    * hsmr-refiner: HSMR's `skelify-refiner` setting written from hsmr-pipeline.md §3.3–3.5:
      one torch.optim.LBFGS problem per batch (loss = batch mean; lr 1, strong Wolfe, history
      100) over (t, q0–2, q3–45, β), 10 steps of up to 20 iterations, early stop at relative
      change < 1e-9 or |max grad| < 1e-7; loss = Geman–McClure (σ 100) 2D error of the 42
      keypoints (37, 38 off, confidences < 0.3 off, squared confidences) in target-torso units
      + 25·Σβ² + 0.6603·mean angle prior; full SKEL skin (6890 vertices) → 44 keypoints.
    Both results are scored by the same function (`Skelify.evaluate`: mean 2D error of the
    confident keypoints, normalised crop units, with each method's own final camera).
(2) Round: the converter's time for the dataset (read + orig + flip fits) vs one refinement
    round 0 → 1 over the same people (SKELify from the label; and, on a copy, from the label and
    from a regressor-like prediction, two candidates per person side), per 1,000 people, each
    with camera='crop' (HSMR's crop camera) and camera='source' (the dataset's own camera); with
    the labels' MPJPE / PA-MPJPE vs the synthetic truth before and after, and a second round
    1 → 2 from labels per camera (--cameras).
(3) Intrinsics hidden (the dataset.json moved aside, as for HMR2.0 tars, which carry none): rounds
    0 → 1 → 2 from the good round-0 labels with camera='full-image' (CLIFF's focal √(W² + H²), the
    default before per-image focal fitting) and camera='fit-focal' (each image's focal fitted from
    its people, the default now) side by side: the change in MPJPE / PA-MPJPE vs truth and the
    fitted focal's error vs the dataset's true focal; and a round 0 → 1 from the same labels with
    every third one corrupted (N(0, 0.25) rad on q, as tests/test_refine.py) with the dataset's
    camera, CLIFF's and the fitted focal (hidden), for the gain on bad labels.

Threads default to 1: on a 2-core machine shared with another job, OpenMP's spinning threads make
2 threads many times slower for these small kernels. Both methods run with the same setting.

Usage: python benchmarks/skelify.py [--n 1000] [--n-fit 256] [--baseline-n 64] [--threads 1]
       [--family A|B] [--cameras crop,source] [--rounds-only]
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from skelpgt.datasets import LabelStore
from skelpgt.datasets.release import read_manifest
from skelpgt.datasets.rounds import dataset_meta
from skelpgt.datasets.workdir import Workdir
from skelpgt.fitting.body import load_body
from skelpgt.fitting.camera import normalise_keypoints, project
from skelpgt.fitting.convert import ConvertConfig, Converter
from skelpgt.fitting.keypoints import KeypointRegressor
from skelpgt.fitting.limits import angle_prior
from skelpgt.fitting.mirror import mirror_pose
from skelpgt.fitting.skel import SKEL
from skelpgt.pipelines import usecases
from skelpgt.pipelines.usecases.report import label_error_vs_truth
from skelpgt.fitting.skelify import UNRELIABLE_KEYPOINTS, Skelify

BATCH = 64
# hsmr-pipeline.md §3.4, skelify-refiner: w_2D² = 1, w_β² = 25, (w_q·κ)² = (4.78·0.17)².
REFINER = {"steps": 10, "max_iter": 20, "w_2d": 1.0, "w_beta": 25.0, "w_prior": (4.78 * 0.17) ** 2, "sigma": 100.0}


def hsmr_refiner(skel: SKEL, regressor: KeypointRegressor, kp: torch.Tensor, q: torch.Tensor, betas: torch.Tensor, cam_t: torch.Tensor):
    """HSMR's refiner setting on one batch: keypoints (B,44,3) normalised, start q (B,46), β (B,10), t (B,3) → (q, β, t)."""
    conf = kp[..., 2] * (kp[..., 2] >= 0.3)  # the loader's confidence suppression
    conf[:, list(UNRELIABLE_KEYPOINTS)] = 0.0
    xy = kp[..., :2]
    torso = 0.5 * ((xy[:, 5] - xy[:, 12]).norm(dim=-1) + (xy[:, 2] - xy[:, 9]).norm(dim=-1)) + 1e-6
    t, orient, body, b = (v.detach().clone().requires_grad_(True) for v in (cam_t, q[:, :3], q[:, 3:], betas))
    params = [t, orient, body, b]
    sigma2 = REFINER["sigma"] ** 2

    def loss_fn() -> torch.Tensor:
        pose = torch.cat((orient, body), dim=1)
        projected = project(regressor(skel(pose, b).skin_verts), t)
        r = (projected - xy) / torso[:, None, None]
        robust = sigma2 * r.square() / (sigma2 + r.square())  # Geman–McClure
        e2d = (conf.square() * robust.sum(-1)).sum(-1)
        return REFINER["w_2d"] * e2d.mean() + REFINER["w_beta"] * b.square().sum(-1).mean() + REFINER["w_prior"] * angle_prior(pose).mean()

    optimizer = torch.optim.LBFGS(
        params, lr=1.0, max_iter=REFINER["max_iter"], history_size=100, line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-9
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    previous = None
    for _ in range(REFINER["steps"]):
        loss = float(optimizer.step(closure).detach())  # the loss at the start of the step
        if previous is not None and abs(previous - loss) / max(abs(previous), abs(loss), 1.0) < 1e-9:
            break
        if all(p.grad is not None and abs(float(p.grad.max())) < 1e-7 for p in params):  # HSMR's |max(grad)|, sic
            break
        previous = loss
    return torch.cat((orient, body), dim=1).detach(), b.detach(), t.detach()


def build_round0(models_dir: str, root: Path, n_people: int, seed: int) -> dict:
    """Synthetic dataset of ≈ n_people people → round-0 labels and release (the use case `build_round0`); converter seconds."""
    from skelpgt.datasets.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(root / "source", max(1, math.ceil(n_people / 2.15)), seed=seed, models_dir=models_dir, image_size=128)
    workdir = root / "work"
    built = usecases.build_round0(workdir, usecases.BuildConfig(tuple(map(str, data.shards)), "bench"), usecases.convert_locally(Converter.from_models_dir(models_dir, ConvertConfig())))
    labelled = built.summary["labelled"]
    return {"workdir": workdir, "truth": data.truth, "people": data.n_persons, "labelled": labelled, "convert_s": 2 * labelled / built.summary["fits_per_s"]}


def fit_inputs(workdir: Path, skelify: Skelify, n: int, noise: float, seed: int) -> dict:
    """Orig sides of the first n labelled people: keypoints, label, a regressor-like start (same for both methods), dataset camera."""
    from skelpgt.datasets.readers import read_source
    from skelpgt.pipelines.usecases.refine import crop_camera, intrinsics_px
    from skelpgt.datasets.release import read_manifest

    sources = read_manifest(Workdir(workdir).round("bench", 0))["config"]["sources"]
    with LabelStore(Workdir(workdir).labels) as store:
        labels = store.skel_labels(0)
    people = [p for p in read_source(sources) if p.key in labels and labels[p.key][0] is not None][:n]
    kp = normalise_keypoints(*(torch.from_numpy(np.stack([getattr(p, f) for p in people])) for f in ("keypoints_2d", "center", "scale")))
    q = torch.from_numpy(np.stack([labels[p.key][0].poses for p in people]))
    betas = torch.from_numpy(np.stack([labels[p.key][0].betas for p in people]))
    g = torch.Generator().manual_seed(seed)
    start_q = q + torch.randn(q.shape, generator=g) * noise
    start_b = betas + torch.randn(betas.shape, generator=g) * 0.3
    keys = [p.key for p in people]
    by_key = {p.key: p for p in people}
    focal, principal = crop_camera(keys, "orig", by_key, intrinsics_px(by_key, "source"))
    return {
        "keys": keys, "kp": kp, "q": start_q, "betas": start_b, "t": skelify.camera(kp, start_q, start_b),
        "focal": focal, "principal": principal, "t_persp": skelify.camera(kp, start_q, start_b, focal, principal),
    }  # fmt: skip


def run_skelify(skelify: Skelify, inputs: dict, n: int, perspective: bool = False):
    """Samples/s and (kp2d_err, limit violation) of SKELify over the first n inputs, batches of 64 (crop or dataset camera)."""
    parts, start = [], time.perf_counter()
    for a in range(0, n, BATCH):
        s = slice(a, min(a + BATCH, n))
        if perspective:
            parts.append(skelify.fit(inputs["kp"][s], inputs["q"][s], inputs["betas"][s], inputs["t_persp"][s], inputs["focal"][s], inputs["principal"][s]))
        else:
            parts.append(skelify.fit(inputs["kp"][s], inputs["q"][s], inputs["betas"][s], inputs["t"][s]))
    seconds = time.perf_counter() - start
    return n / seconds, torch.cat([p.kp2d_err for p in parts]), torch.cat([p.limit_violation for p in parts])


def run_hsmr(skel: SKEL, regressor: KeypointRegressor, skelify: Skelify, inputs: dict, n: int):
    """Samples/s and (kp2d_err, limit violation) of the HSMR refiner setting over the first n inputs, batches of 64."""
    errs, viols, start, fitted = [], [], time.perf_counter(), []
    for a in range(0, n, BATCH):
        s = slice(a, min(a + BATCH, n))
        fitted.append((s, hsmr_refiner(skel, regressor, inputs["kp"][s], inputs["q"][s], inputs["betas"][s], inputs["t"][s])))
    seconds = time.perf_counter() - start
    for s, (q, b, t) in fitted:
        result = skelify.evaluate(inputs["kp"][s], q, b, t)
        errs.append(result.kp2d_err)
        viols.append(result.limit_violation)
    return n / seconds, torch.cat(errs), torch.cat(viols)


def row(name: str, n: int, rate: float, err: torch.Tensor, viol: torch.Tensor) -> str:
    return f"{name:<14} {n:>5} {rate:>10.2f} {err.nanmean():>10.5f} {err.nanmedian():>10.5f} {viol.nanmean():>8.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=None)
    parser.add_argument("--n", type=int, default=1000, help="people in the synthetic dataset (round timing)")
    parser.add_argument("--n-fit", type=int, default=256, help="people (orig side) for SKELify's samples/s")
    parser.add_argument("--baseline-n", type=int, default=64, help="people for the HSMR refiner setting (≈ 20–40 s per 64)")
    parser.add_argument("--start-noise", type=float, default=0.1, help="rad of noise on the label's q for the start")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", default="A", choices=("A", "B"), help="synthetic stand-in family (without --models-dir)")
    parser.add_argument("--cameras", default="crop,source", help="cameras of the (2) rounds with the dataset's intrinsics visible")
    parser.add_argument("--rounds-only", action="store_true", help="skip (1), the fits at batch 64 and the HSMR refiner baseline")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="skelpgt-bench-skelify-"))
    try:
        models_dir = args.models_dir
        if models_dir is None:
            from skelpgt.fitting.synthetic import make_synthetic_models

            models_dir = make_synthetic_models(root / "models", family=args.family)
        body = load_body(models_dir, "male")
        skel, regressor = body.skel, body.keypoints
        skelify = Skelify(skel, regressor)
        built = build_round0(str(models_dir), root, args.n, args.seed)
        print(f"models: {models_dir if args.models_dir else f'synthetic family {args.family}'}")
        if not args.rounds_only:
            fit_comparison(skel, regressor, skelify, built["workdir"], args)
        round_comparison(skelify, built, models_dir, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def fit_comparison(skel: SKEL, regressor: KeypointRegressor, skelify: Skelify, workdir: Path, args) -> None:
    """(1): SKELify (crop and dataset camera) vs the HSMR refiner setting, same people and starts."""
    inputs = fit_inputs(workdir, skelify, max(args.n_fit, args.baseline_n), args.start_noise, args.seed)
    n_fit, n_base = min(args.n_fit, len(inputs["keys"])), min(args.baseline_n, len(inputs["keys"]))
    skelify.fit(inputs["kp"][:8], inputs["q"][:8], inputs["betas"][:8])  # warm-up

    print(f"threads={args.threads} batch={BATCH}; start = round-0 label + N(0, {args.start_noise}) on q, + N(0, 0.3) on β; same camera start")
    print(f"{'method':<14} {'n':>5} {'samples/s':>10} {'kp2d mean':>10} {'median':>10} {'viol°':>8}")
    rate, err, viol = run_skelify(skelify, inputs, n_fit)
    print(row("skelify", n_fit, rate, err, viol), flush=True)
    rate_p, err_p, viol_p = run_skelify(skelify, inputs, n_fit, perspective=True)
    print(row("skelify-persp", n_fit, rate_p, err_p, viol_p), flush=True)
    rate_sub, err_sub, viol_sub = run_skelify(skelify, inputs, n_base)
    print(row("skelify*", n_base, rate_sub, err_sub, viol_sub), flush=True)
    base_rate, base_err, base_viol = run_hsmr(skel, regressor, skelify, inputs, n_base)
    print(row("hsmr-refiner*", n_base, base_rate, base_err, base_viol), flush=True)
    print(f"speed ratio skelify/hsmr-refiner: {rate_sub / base_rate:.1f}x; kp2d_err ratio: {float(err_sub.nanmean() / base_err.nanmean()):.2f}"
          "   (* = the baseline's people, same starts)")  # fmt: skip


@contextmanager
def intrinsics_hidden(sources: list[str]):
    """The sources' dataset.json moved aside (as for HMR2.0 tars: no intrinsics), put back on exit."""
    metas = sorted({m for m in (dataset_meta(s) for s in sources) if m is not None})
    hidden = [m.with_name(m.name + ".hidden") for m in metas]
    for m, h in zip(metas, hidden):
        m.rename(h)
    try:
        yield
    finally:
        for m, h in zip(metas, hidden):
            h.rename(m)


def focal_accuracy(workdir: Path, skelify: Skelify, true_focal: float) -> tuple[float, float, float]:
    """Median and 90th percentile |f / f_true − 1| of fit-focal's per-image focal (intrinsics hidden), and CLIFF's |f / f_true − 1|."""
    from skelpgt.datasets.readers import read_source
    from skelpgt.pipelines.usecases.refine import fit_image_focals, intrinsics_px

    sources = read_manifest(Workdir(workdir).round("bench", 0))["config"]["sources"]
    with LabelStore(Workdir(workdir).labels) as store:
        labels = store.skel_labels(0)
    people = {p.key: p for p in read_source(sources) if p.key in labels}
    with intrinsics_hidden(sources):
        start = intrinsics_px(people, "fit-focal")
        fitted = fit_image_focals(people, labels, skelify, start, declared={})
    ratio = np.array([fitted[k][0] / true_focal - 1 for k in sorted(fitted)])
    cliff = next(iter(start.values()))[0] / true_focal - 1
    return float(np.median(np.abs(ratio))), float(np.quantile(np.abs(ratio), 0.9)), float(cliff)


def round_comparison(skelify: Skelify, built: dict, models_dir, args) -> None:
    """(2): refinement rounds per camera, timed, with MPJPE / PA-MPJPE vs truth; hidden intrinsics: CLIFF vs fit-focal."""
    import json

    workdir, root = built["workdir"], built["workdir"].parent
    per_k = 1000 / built["people"]
    mm = lambda w, r: tuple(label_error_vs_truth(w, r, built["truth"], models_dir, aligned=a) * 1000 for a in (False, True))  # noqa: E731
    truth0 = mm(workdir, 0)
    all_inputs = fit_inputs(workdir, skelify, 10**9, args.start_noise, args.seed)
    predictions = {
        k: {"orig": (q.numpy(), b.numpy()), "flip": (mirror_pose(q).numpy(), b.numpy())}
        for k, q, b in zip(all_inputs["keys"], all_inputs["q"], all_inputs["betas"])
    }
    sources = read_manifest(Workdir(workdir).round("bench", 0))["config"]["sources"]
    corrupted = corrupt_labels(workdir, root / "work-corrupted")
    truth_bad = mm(corrupted, 0)
    rounds = []  # (name, report, seconds, (MPJPE, PA-MPJPE) after)
    runs = [(c, False, p, False) for c in args.cameras.split(",") if c for p in (None, predictions)]
    # The change, intrinsics hidden: CLIFF's estimate (before) vs a fitted focal (after), from good and from corrupted labels.
    runs += [(c, True, None, False) for c in ("full-image", "fit-focal")]
    runs += [("source", False, None, True)] + [(c, True, None, True) for c in ("full-image", "fit-focal")]
    for camera, hidden, preds, bad in runs:
        label = f"{camera}{' (hidden)' if hidden else ''}: {'corrupted ' if bad else ''}{'labels + predictions' if preds else 'labels'}"
        work = root / f"work-{camera}-{'h' if hidden else 'v'}-{'p' if preds else 'l'}{'-c' if bad else ''}"
        shutil.copytree(corrupted if bad else workdir, work)
        with intrinsics_hidden(sources) if hidden else nullcontext():
            start = time.perf_counter()
            report = usecases.refine_round(work, usecases.RefineConfig("bench", 0, batch_size=BATCH, camera=camera), skelify, predictions=preds, checkpoint_digest="simulated" if preds else "")
            rounds.append((f"0→1 {label}", report, time.perf_counter() - start, mm(work, 1)))
            if preds is None and not bad:
                start = time.perf_counter()
                report = usecases.refine_round(work, usecases.RefineConfig("bench", 1, batch_size=BATCH, camera=camera), skelify)
                rounds.append((f"1→2 {label}", report, time.perf_counter() - start, mm(work, 2)))
    print()
    print(f"dataset: {built['people']} people, {built['labelled']} labelled (orig + flip = {2 * built['labelled']} label sides)")
    print(f"{'step':<44} {'seconds':>8} {'s / 1000 people':>16} {'changed':>8} {'kept':>6} {'kp2d before→after':>20} {'MPJPE / PA-MPJPE vs truth mm':>29}")
    print(f"{'converter (read + orig + flip)':<44} {built['convert_s']:>8.1f} {built['convert_s'] * per_k:>16.1f} {'':>8} {'':>6} {'':>20} {f'{truth0[0]:.1f} / {truth0[1]:.1f}':>29}")
    print(f"{'round 0 with every third label corrupted':<44} {'':>8} {'':>16} {'':>8} {'':>6} {'':>20} {f'{truth_bad[0]:.1f} / {truth_bad[1]:.1f}':>29}")
    for name, r, s, e in rounds:
        print(f"{name:<44} {s:>8.1f} {s * per_k:>16.1f} {r.changed:>8} {r.kept:>6} {f'{r.kp2d_err_before:.5f}→{r.kp2d_err_after:.5f}':>20} {f'{e[0]:.1f} / {e[1]:.1f}':>29}")
    print("(kp2d_err is measured under each round's own camera, so rows with different cameras differ already before)")
    seconds = {name: s for name, _, s, _ in rounds}
    for name in ("0→1 source: labels", "0→1 fit-focal (hidden): labels"):
        if name in seconds:
            print(f"round / converter time, {name[4:]}: {seconds[name] / built['convert_s']:.2f}x")
    true_focal = float(json.loads(dataset_meta(sources[0]).read_text())["camera"]["focal_px"])
    median, p90, cliff = focal_accuracy(workdir, skelify, true_focal)
    after = {name: e for name, _, _, e in rounds}
    print()
    print(f"intrinsics hidden, round 0→1 from good labels (round 0: {truth0[0]:.2f} / {truth0[1]:.2f} mm), change vs round 0 in mm:")
    print(f"{'camera':<44} {'focal |f/f_true − 1|':>22} {'Δ MPJPE':>9} {'Δ PA-MPJPE':>11} {'1→2 Δ MPJPE / PA':>18}")
    for camera, focal in (("full-image", f"{abs(cliff):.3f} (every image)"), ("fit-focal", f"median {median:.3f}, p90 {p90:.3f}")):
        e1, e2 = after[f"0→1 {camera} (hidden): labels"], after[f"1→2 {camera} (hidden): labels"]
        before_after = "before (CLIFF √(W²+H²))" if camera == "full-image" else "after (per-image fitted focal)"
        print(f"{camera + ': ' + before_after:<44} {focal:>22} {e1[0] - truth0[0]:>+9.2f} {e1[1] - truth0[1]:>+11.2f} {f'{e2[0] - truth0[0]:+.2f} / {e2[1] - truth0[1]:+.2f}':>18}")
    print("target: Δ ≤ +1 mm MPJPE, ≤ +0.5 mm PA-MPJPE")
    print(f"from corrupted labels (round 0: {truth_bad[0]:.2f} / {truth_bad[1]:.2f} mm), round 0→1 MPJPE / PA-MPJPE vs truth, mm:")
    for name in ("source", "full-image (hidden)", "fit-focal (hidden)"):
        e = after[f"0→1 {name}: corrupted labels"]
        print(f"  {name:<42} {e[0]:.2f} / {e[1]:.2f}")


def corrupt_labels(workdir: Path, out: Path) -> Path:
    """A copy of the project whose every third round-0 label side is a manual version with N(0, 0.25) rad on q (as tests/test_refine.py)."""
    shutil.copytree(workdir, out)
    with LabelStore(Workdir(out).labels, "a") as store:
        current = store.labels_of_round(0)
        bad = np.arange(len(current["label_id"])) % 3 == 0
        noisy = current["poses"][bad] + np.random.default_rng(0).normal(0, 0.25, size=current["poses"][bad].shape).astype(np.float32)
        new = store.append(
            {"sample_key": list(current["sample_key"][bad]), "side": list(current["side"][bad]), "round": 0, "producer": "manual",
             "parent_label_id": current["label_id"][bad], "poses": noisy, "betas": current["betas"][bad], "trans": current["trans"][bad]}
        )  # fmt: skip
        store.set_current(0, new)
    return out


if __name__ == "__main__":
    main()

"""Training throughput: real release loader vs the same model on in-memory tensors, in one run.

    python benchmarks/train.py [--release DIR] [--arch vit-tiny-conv] [--recipe from-scratch] [--batch-size 16] [--steps 20] [--workers 2]

Without --release a toy SKEL release (`skelpgt.model.testing.make_skel_release`) is written to a
temporary folder. Both legs run `train_step` of the training loop (network forward, SKEL + keypoint
losses, backward, AdamW) with the recipe's losses; the in-memory leg reuses one batch already on the device. Prints images/s for
each leg and the ratio loader/in-memory (target ≥ 0.8: the loader costs ≤ 20%).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from skelpgt.fitting.models import ensure_models_dir
from skelpgt.model.data import DataConfig, make_loader
from skelpgt.model.losses import BodyModel
from skelpgt.model.network import pelvis_frame
from skelpgt.model.train import TrainConfig, build_model, recipe, train_step


def _run(model, body, opt, cfg, batches, steps, warmup, device, amp):
    for _ in range(warmup):
        train_step(model, body, opt, {k: v.to(device) for k, v in next(batches).items()}, cfg, 0, amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        train_step(model, body, opt, batch, cfg, 0, amp)
        n += batch["img"].shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--release")
    ap.add_argument("--models-dir")
    ap.add_argument("--arch", default="vit-tiny-conv")
    ap.add_argument("--recipe", default="from-scratch")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--images", type=int, default=64, help="toy release size when --release is not given")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-amp", action="store_true")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    amp = device.type == "cuda" and not a.no_amp
    models_dir = ensure_models_dir(a.models_dir)
    tmp = None
    release = a.release
    if release is None:
        from skelpgt.model.testing import make_skel_release

        tmp = tempfile.TemporaryDirectory()
        release = str(make_skel_release(tmp.name, models_dir, n_images=a.images, seed=0))
    torch.manual_seed(0)
    body = BodyModel(models_dir).to(device)
    frame = tuple(map(tuple, pelvis_frame(body.skel).double().tolist()))
    data = DataConfig(release=release, split=None, batch_size=a.batch_size, pelvis_frame=frame)
    cfg = TrainConfig(data=data, out_dir="", arch=a.arch, **recipe(a.recipe))
    model = build_model(cfg, body).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader_it = iter(make_loader(data, num_workers=a.workers))
    fixed = {k: v.to(device) for k, v in next(loader_it).items()}

    def memory():
        while True:
            yield fixed

    mem = _run(model, body, opt, cfg, memory(), a.steps, a.warmup, device, amp)
    real = _run(model, body, opt, cfg, loader_it, a.steps, a.warmup, device, amp)
    out = {"arch": a.arch, "recipe": a.recipe, "device": str(torch.cuda.get_device_name() if device.type == "cuda" else "cpu"),
           "batch_size": a.batch_size, "workers": a.workers, "steps": a.steps, "amp": amp,
           "images_per_s_loader": round(real, 2), "images_per_s_memory": round(mem, 2), "ratio": round(real / mem, 3)}  # fmt: skip
    print(f"{a.arch} on {out['device']}: loader {real:.1f} img/s, in-memory {mem:.1f} img/s, ratio {real / mem:.3f} (target >= 0.8)")
    print(json.dumps(out))
    if tmp is not None:
        tmp.cleanup()
    return out


if __name__ == "__main__":
    main()

"""`skelpgt` command line: what users do by hand (models, data, conversion, inspection)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="SMPL → SKEL pseudo ground truth: models, data, labels and releases.", no_args_is_help=True)
models_app = typer.Typer(help="Body-model files: make synthetic stand-ins, check a models directory.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("make-synthetic")
def models_make_synthetic(
    out: Path = typer.Argument(..., help="Folder to write smpl/, skel/ and hsmr/ into."),
    tiny: bool = typer.Option(False, help="Small skeleton mesh (for tests); the skin stays 6890 vertices."),
    seed: int = typer.Option(0, help="Seed of the stand-in's pose blend shapes."),
) -> None:
    """Write synthetic SMPL/SKEL/HSMR model files in the official formats."""
    from skelpgt.fitting.models import check_models_dir
    from skelpgt.fitting.synthetic import make_synthetic_models

    make_synthetic_models(out, tiny=tiny, seed=seed)
    problems = check_models_dir(out)
    if problems:
        raise typer.Exit(_report(problems))
    typer.echo(f"wrote synthetic models to {out}")


@models_app.command("check")
def models_check(path: Path = typer.Argument(..., help="Models directory (real or synthetic).")) -> None:
    """Validate a models directory; exit 1 and list every problem if anything is missing or wrong."""
    from skelpgt.fitting.models import check_models_dir

    problems = check_models_dir(path)
    if problems:
        raise typer.Exit(_report(problems))
    typer.echo(f"{path}: all model files present and well-formed")


@app.command("convert")
def convert_npz(
    input_npz: Path = typer.Argument(..., help="SMPL parameters: poses (N,72) or global_orient+body_pose, betas, trans."),
    output_npz: Path = typer.Argument(..., help="Where to write SKEL poses, betas, trans and fit metrics."),
    models_dir: Path = typer.Option(None, help="Models directory (default: $SKELPGT_MODELS_DIR or the stand-ins)."),
    gender: str = typer.Option("male", help="SKEL gender to fit (SKEL has no neutral model)."),
    smpl_gender: str = typer.Option("neutral", help="Gender of the SMPL labels (HMR2.0-style data is neutral)."),
    method: str = typer.Option("fast", help="fast | staged-lbfgs"),
    batch: int = typer.Option(256, help="People per chunk (bounds memory)."),
    flip: bool = typer.Option(False, help="Also fit the mirrored person (flip_* keys)."),
    sequence: bool = typer.Option(False, help="Rows are consecutive frames: remove 2π jumps between them."),
) -> None:
    """Convert SMPL parameters in an npz file to SKEL, with per-person fit metrics."""
    import numpy as np

    from skelpgt.fitting.convert import ConvertConfig, Converter
    from skelpgt.fitting.models import ensure_models_dir

    smpl = _read_smpl_npz(input_npz)
    config = ConvertConfig(method=method, skel_gender=gender, smpl_gender=smpl_gender, chunk_size=batch)
    converter = Converter.from_models_dir(ensure_models_dir(models_dir), config)
    results = {"": converter.convert(**smpl, progress=True)}
    if flip:
        from skelpgt.fitting.mirror import mirror_smpl_pose, mirror_translation

        results["flip_"] = converter.convert(mirror_smpl_pose(smpl["pose"]), smpl["betas"], mirror_translation(smpl["trans"]), progress=True)
    if sequence:
        from skelpgt.fitting.limits import unwrap_angles

        for r in results.values():
            r.poses = unwrap_angles(r.poses, dim=0)
    out = {}
    for prefix, r in results.items():
        out.update({prefix + k: getattr(r, k).numpy() for k in ("poses", "betas", "trans", "pve_mean", "pve_max", "limit_violation", "converged", "kp2d_err")})
        out[prefix + "reason"] = np.array(r.reason)
    out["config_digest"] = np.array(config.digest())
    output_npz.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_npz.with_name(output_npz.name + ".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(output_npz)
    ok = results[""].converged
    typer.echo(f"{output_npz}: {int(ok.sum())}/{len(ok)} converted, median pve_mean {results[''].pve_mean.nanmedian() * 1000:.1f} mm")


def _read_smpl_npz(path: Path) -> dict:
    """SMPL pose (N,72), betas (N,10), trans (N,3) tensors from an npz, with errors naming the key."""
    import numpy as np
    import torch

    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
        if "poses" in keys:
            pose = data["poses"]
        elif {"global_orient", "body_pose"} <= keys:
            pose = np.concatenate((data["global_orient"], data["body_pose"]), axis=1)
        else:
            raise typer.BadParameter(f"{path}: needs 'poses' (N,72) or 'global_orient' + 'body_pose'")
        if pose.ndim != 2 or pose.shape[1] not in (72, 156):
            raise typer.BadParameter(f"{path}: field 'poses' has shape {pose.shape}, expected (N, 72)")
        if pose.shape[1] == 156:  # SMPL+H: body joints, hands zeroed
            pose = np.concatenate((pose[:, :66], np.zeros((len(pose), 6), pose.dtype)), axis=1)
        if "betas" not in keys:
            raise typer.BadParameter(f"{path}: field 'betas' missing")
        betas = np.broadcast_to(data["betas"][..., :10], (len(pose), 10))
        trans = data["trans"] if "trans" in keys else np.zeros((len(pose), 3))
    as_f32 = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    return {"pose": as_f32(pose), "betas": as_f32(betas), "trans": as_f32(trans)}


def _report(problems: list[str]) -> int:
    for line in problems:
        typer.echo(f"error: {line}", err=True)
    return 1


if __name__ == "__main__":
    app()

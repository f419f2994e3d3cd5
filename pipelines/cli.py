"""`skelpgt` command line: what users do by hand (models, data, conversion, inspection).

Each command imports what it needs inside its function, on purpose: importing the use cases
(torch, smplx, h5py, webdataset) takes ~7 s on a busy 2-core machine, the CLI module alone ~0.2 s
(measured with /usr/bin/time, 2026-12-01), so `skelpgt --help`, `verify` and `inspect` start
at once. Commands with work call the same functions as the flows (`skelpgt.pipelines.usecases`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from .errors import OneLineErrors

_DEVICE_HELP = "Where the fits run: cpu (default), cuda or cuda:N; results match the CPU's up to float rounding."
app = typer.Typer(help="SMPL → SKEL pseudo ground truth: models, data, labels and releases.", no_args_is_help=True, cls=OneLineErrors)
models_app = typer.Typer(help="Body-model files: make synthetic stand-ins, check a models directory.", no_args_is_help=True)
app.add_typer(models_app, name="models")
data_app = typer.Typer(help="Datasets: render the synthetic one.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.callback()
def _options(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="On an error, show the full traceback (also: SKELPGT_DEBUG=1)."),
) -> None:
    """SMPL → SKEL pseudo ground truth. Errors print one line; exit 2 = bad input, 1 = failed run."""


@models_app.command("make-synthetic")
def models_make_synthetic(
    out: Path = typer.Argument(..., help="Folder to write smpl/, skel/ and hsmr/ into."),
    tiny: bool = typer.Option(False, help="Small skeleton mesh (for tests); the skin stays 6890 vertices."),
    seed: int = typer.Option(0, help="Seed of the stand-in's pose blend shapes."),
    family: str = typer.Option("A", help="Stand-in family: A, or B (another skin, SMPL regressor and skinning; see fitting/synthetic_b.py)."),
) -> None:
    """Write synthetic SMPL/SKEL/HSMR model files in the official formats."""
    from skelpgt.fitting.models import check_models_dir
    from skelpgt.fitting.synthetic import make_synthetic_models

    make_synthetic_models(out, tiny=tiny, seed=seed, family=family.upper())
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
    input_npz: Path = typer.Argument(..., help="SMPL parameters: poses (N,72|156|165), root_orient+pose_body (AMASS) or global_orient+body_pose; betas, trans."),
    output_npz: Path = typer.Argument(..., help="Where to write SKEL poses, betas, trans and fit metrics."),
    models_dir: Path = typer.Option(None, help="Models directory (default: $SKELPGT_MODELS_DIR or the stand-ins)."),
    gender: str = typer.Option("male", help="SKEL gender to fit (SKEL has no neutral model)."),
    smpl_gender: str = typer.Option("auto", help="SMPL gender of the parameters: auto = the file's 'gender' field (AMASS), else neutral; or neutral|male|female."),
    method: str = typer.Option("fast", help="fast | staged-lbfgs"),
    batch: int = typer.Option(256, min=1, help="People per chunk (bounds memory)."),
    flip: bool = typer.Option(False, help="Also fit the mirrored person (flip_* keys)."),
    sequence: bool = typer.Option(False, help="Rows are consecutive frames of one person: continuous joint-angle curves (Euler branch nearest the previous frame, gimbal lock handled)."),
    shared_betas: bool = typer.Option(False, help="With --sequence: one SKEL β for the whole sequence."),
    beta_bound: float = typer.Option(None, help="Soft bound on |SKEL β| (e.g. 3: HSMR's loader drops labels beyond it); off by default."),
    device: str = typer.Option("cpu", help=_DEVICE_HELP),
) -> None:
    """Convert SMPL parameters in an npz file to SKEL, with per-person fit metrics."""
    import numpy as np

    from skelpgt.fitting.convert import ConvertConfig, Converter
    from skelpgt.fitting.genders import convert_by_gender, gender_groups
    from skelpgt.fitting.mirror import mirror_smpl_pose, mirror_translation
    from skelpgt.fitting.models import ensure_models_dir
    from skelpgt.fitting.sequence import SequenceConfig, convert_sequence

    if shared_betas and not sequence:
        raise typer.BadParameter("--shared-betas needs --sequence")
    if smpl_gender not in ("auto", "neutral", "male", "female"):
        raise typer.BadParameter(f"--smpl-gender {smpl_gender!r}: choose auto, neutral, male or female")
    smpl = _read_smpl_npz(input_npz)
    n = len(smpl["pose"])
    genders = smpl["genders"] if smpl_gender == "auto" else [smpl_gender] * n
    groups = gender_groups(genders, "neutral")
    if sequence and len(groups) > 1:
        raise typer.BadParameter(f"{input_npz}: field 'gender': --sequence needs one person (one gender), found {sorted(groups)}")
    config = ConvertConfig(method=method, skel_gender=gender, smpl_gender=next(iter(groups)), chunk_size=batch, beta_bound=beta_bound)
    base = Converter.from_models_dir(ensure_models_dir(models_dir), config, device=device)
    sides = {"": (smpl["pose"], smpl["trans"])}
    if flip:
        sides["flip_"] = (mirror_smpl_pose(smpl["pose"]), mirror_translation(smpl["trans"]))

    def run(conv, rows):
        if sequence:
            seq = SequenceConfig(shared_betas=shared_betas)
            return tuple(convert_sequence(conv, pose[rows], smpl["betas"][rows], trans[rows], seq, progress=True) for pose, trans in sides.values())
        return tuple(conv.convert(pose[rows], smpl["betas"][rows], trans[rows], progress=True) for pose, trans in sides.values())

    parts, digests = convert_by_gender(base, [g or "neutral" for g in genders], run)
    results = dict(zip(sides, parts))
    out = {}
    for prefix, r in results.items():
        out.update({prefix + k: getattr(r, k).numpy() for k in ("poses", "betas", "trans", "pve_mean", "pve_max", "limit_violation", "converged", "kp2d_err")})
        out[prefix + "reason"] = np.array(r.reason)
        out[prefix + "flags"] = np.array(r.flags)
    # one digest when every row used the same SMPL gender, else one per row
    out["config_digest"] = np.array(digests[0]) if len(groups) == 1 else np.array(digests)
    out["smpl_gender"] = np.array([g or "neutral" for g in genders])
    if smpl["framerate"] is not None:
        out["mocap_framerate"] = np.array(smpl["framerate"])
    output_npz.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_npz.with_name(output_npz.name + ".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(output_npz)
    ok = results[""].converged
    flagged = sum(bool(f) for f in results[""].flags)
    typer.echo(f"{output_npz}: {int(ok.sum())}/{len(ok)} converted ({flagged} flagged: see 'flags'), median pve_mean {results[''].pve_mean.nanmedian() * 1000:.1f} mm")


@data_app.command("make-synthetic")
def data_make_synthetic(
    out: Path = typer.Argument(..., help="Folder to write shards/, truth.npz and dataset.json into."),
    n: int = typer.Option(..., "--n", help="Number of images."),
    seed: int = typer.Option(0, help="Dataset seed: same seed and options give byte-identical files."),
    models_dir: Path = typer.Option(None, help="Models directory (default: $SKELPGT_MODELS_DIR or the stand-ins)."),
    image_size: int = typer.Option(256, help="Square image side, pixels."),
    shard_size: int = typer.Option(64, help="Images per tar shard."),
    max_people: int = typer.Option(3, help="People per image are drawn from 1..max-people."),
    hard_fraction: float = typer.Option(0.15, help="Share of people in hard poses (deep squat, high kick, ...)."),
) -> None:
    """Render a synthetic HMR2.0-format dataset (shaded SMPL people, exact keypoints, true parameters)."""
    from skelpgt.datasets.synthetic import make_synthetic_dataset

    info = make_synthetic_dataset(
        out, n, seed=seed, models_dir=models_dir, image_size=image_size, people_per_image=(1, max_people),
        shard_size=shard_size, hard_fraction=hard_fraction,
    )  # fmt: skip
    typer.echo(f"wrote {info.n_images} images, {info.n_persons} persons ({info.n_labelled} with SMPL labels) in {len(info.shards)} shard(s)")
    for path in (*info.shards, info.truth, info.meta):
        typer.echo(f"  {path}")
    typer.echo(f"{info.seconds:.1f} s ({info.seconds / info.n_images:.3f} s/image)")


@app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="A shard (.tar), a release round folder or a release folder."),
    round: int = typer.Option(None, help="Release round (default: latest)."),
    max_samples: int = typer.Option(20000, help="Stop reading after this many images."),
) -> None:
    """Counts, field statistics and a few samples of a shard or release, as markdown."""
    from skelpgt.datasets import inspect_path

    try:
        typer.echo(inspect_path(path, round=round, max_samples=max_samples))
    except (FileNotFoundError, ValueError) as err:
        raise typer.Exit(_report([str(err)])) from None


@app.command("verify")
def verify_cmd(
    release: Path = typer.Argument(..., help="Release round folder or release folder."),
    store: Path = typer.Option(None, help="labels.h5 (or its workdir): also check every label id and value against it."),
    round: int = typer.Option(None, help="Release round (default: latest)."),
) -> None:
    """Check checksums, counts and label digests of a release round; exit 1 on any mismatch."""
    from skelpgt.datasets import verify_release

    report = verify_release(release, round, store=store)
    typer.echo(report.to_markdown())
    if not report.ok:
        raise typer.Exit(1)


@app.command("lineage")
def lineage_cmd(
    key: str = typer.Argument(..., help="Per-person key '<image key>_<index>', optionally with '_orig' or '_flip'."),
    workdir: Path = typer.Option(..., help="Working directory holding labels.h5 (or the labels.h5 file)."),
) -> None:
    """Every version of a person's labels: producer, round, parent, metrics, acceptance."""
    from skelpgt.datasets import format_lineage, lineage
    from skelpgt.datasets.workdir import Workdir

    if not Workdir(workdir).labels.is_file() and not workdir.is_file():
        raise FileNotFoundError(f"{workdir}: no labels.h5 here (give the workdir of a build)")
    typer.echo(format_lineage(lineage(workdir, key), key))


@app.command("show")
def show_cmd(
    key: str = typer.Argument(..., help="Image key, or per-person key '<image key>_<index>'."),
    release: Path = typer.Option(None, help="Release round or release folder holding the sample."),
    source: Path = typer.Option(None, help="Instead of a release: an input tar (or folder of tars); shows its SMPL labels."),
    round: int = typer.Option(None, help="Release round (default: latest)."),
    out: Path = typer.Option(None, help="PNG to write (default: show-<key>.png in the current folder)."),
    models_dir: Path = typer.Option(None, help="Models directory (default: $SKELPGT_MODELS_DIR or the stand-ins)."),
    gender: str = typer.Option("male", help="SKEL gender of the labels."),
) -> None:
    """PNG of a sample: image with 2D keypoints and box | orig label (skin and skeleton) | flip label on the mirrored image."""
    from skelpgt.datasets.render import show_sample

    if (release is None) == (source is None):
        raise typer.BadParameter("give exactly one of --release and --source")
    try:
        sheet = show_sample(key, release=release, round=round, source=source, models_dir=models_dir, gender=gender)
    except (KeyError, FileNotFoundError) as err:
        raise typer.Exit(_report([str(err).strip("'\"")])) from None
    out = out or Path("show-" + key.replace("/", "_") + ".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    typer.echo(f"wrote {out} ({sheet.width}x{sheet.height})")


@app.command("refine")
def refine_cmd(
    workdir: Path = typer.Argument(..., help="Workdir holding labels.h5 and releases/."),
    release: str = typer.Option("synthetic", help="Release name."),
    from_round: int = typer.Option(None, help="Round to refine (default: the latest)."),
    checkpoint: Path = typer.Option(None, help="Regressor checkpoint (.pt): also start SKELify from its predictions."),
    iterations: int = typer.Option(10, help="SKELify Levenberg–Marquardt steps."),
    batch_size: int = typer.Option(64, help="Person sides per SKELify batch."),
    camera: str = typer.Option("fit-focal", help="Camera of the fits: fit-focal (dataset intrinsics, else each image's focal fitted from its people), full-image (else CLIFF's estimate), source, or crop (HSMR's)."),
    models_dir: Path = typer.Option(None, help="Models directory (default: $SKELPGT_MODELS_DIR or the stand-ins)."),
    device: str = typer.Option("cpu", help=_DEVICE_HELP),
) -> None:
    """One SKELify refinement round: round N → N+1 (labels, history and release); rerun to resume."""
    from skelpgt.fitting.device import resolve_device
    from skelpgt.fitting.models import ensure_models_dir
    from skelpgt.fitting.skelify import Skelify, SkelifyConfig
    from skelpgt.pipelines.usecases.refine import RefineConfig, refine_round

    device = str(resolve_device(device))  # before any work: an unknown device or a missing GPU is one line
    models = str(ensure_models_dir(models_dir))
    config = RefineConfig(release, from_round, None if checkpoint is None else str(checkpoint), batch_size, camera, models, device)
    report = refine_round(workdir, config, Skelify.from_models_dir(models, SkelifyConfig(iterations=iterations), device=device))
    digest = report.manifest["config"]["refine"]["checkpoint_digest"]
    typer.echo(f"round {report.round}: {report.changed} changed, {report.kept} kept, {report.skipped} skipped; "
               f"kp2d_err {report.kp2d_err_before:.4f} → {report.kp2d_err_after:.4f}"
               + (f"; checkpoint sha256 {digest[:16]}" if digest else ""))  # fmt: skip


@app.command("predict")
def predict_cmd(
    checkpoint: Path = typer.Argument(..., help="Regressor checkpoint (.pt)."),
    release: Path = typer.Argument(..., help="Release folder (or one round of it)."),
    out: Path = typer.Argument(..., help="Where to write the predictions (.npz)."),
    round: int = typer.Option(None, help="Round (default: latest)."),
    models_dir: Path = typer.Option(None, help="Models directory (default: $SKELPGT_MODELS_DIR or the stand-ins)."),
    device: str = typer.Option("cpu", help="Where the regressor runs: cpu (default), cuda or cuda:N."),
) -> None:
    """Per-sample regressor predictions (poses, betas, camera, 2D keypoints) for a refinement round."""
    from skelpgt.fitting.device import resolve_device
    from skelpgt.model.predict import predict

    info = predict(checkpoint, release, out, round=round, models_dir=models_dir, device=str(resolve_device(device)))
    typer.echo(f"{out}: {info}")


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Path = typer.Argument(..., help="Regressor checkpoint (.pt)."),
    hmr2_npz: list[Path] = typer.Option([], help="HMR2.0 evaluation npz (3dpw_test, h36m_val_p2, coco_val, ...); repeatable."),
    moyo_npz: list[Path] = typer.Option([], help="HSMR's MOYO npz (moyo_v2.npz); repeatable."),
    images: Path = typer.Option(Path("."), help="Image root the files' image paths are relative to."),
    out: Path = typer.Option(None, help="Folder for eval_files.json and eval_files.md."),
    models_dir: Path = typer.Option(None, help="Models directory (default: $SKELPGT_MODELS_DIR or the stand-ins)."),
    batch_size: int = typer.Option(32, help="Crops per forward pass."),
    max_samples: int = typer.Option(None, help="Evaluate only the first N persons of each file."),
) -> None:
    """MPJPE / PA-MPJPE / PCK of a checkpoint on the standard evaluation files, in HSMR's Table 1 layout."""
    from skelpgt.model.eval_files import evaluate_checkpoint

    r = evaluate_checkpoint(checkpoint, hmr2_npz=hmr2_npz, moyo_npz=moyo_npz, images_root=images, models_dir=models_dir,
                            batch_size=batch_size, max_samples=max_samples, out_dir=out)  # fmt: skip
    typer.echo(r["markdown"])


@app.command("rounds")
def rounds_cmd(
    workdir: Path = typer.Argument(..., help="Workdir holding labels.h5 and releases/."),
    release: str = typer.Option("synthetic", help="Release name."),
    models_dir: Path = typer.Option(None, help="Models directory, for MPJPE vs truth (default: $SKELPGT_MODELS_DIR or the stand-ins)."),
) -> None:
    """Per round: counts, labels changed/kept/rejected, mean kp2d_err, limit violation, MPJPE vs truth (synthetic data)."""
    from skelpgt.pipelines.usecases.report import rounds_report

    typer.echo(rounds_report(workdir, release, models_dir))


@app.command("diff")
def diff_cmd(
    workdir: Path = typer.Argument(..., help="Workdir holding labels.h5."),
    round_a: int = typer.Argument(..., help="Earlier round."),
    round_b: int = typer.Argument(..., help="Later round."),
) -> None:
    """List the labels (person key, side, old id → new id) that differ between two rounds."""
    from skelpgt.datasets.rounds import diff_rounds

    changes = diff_rounds(workdir, round_a, round_b)
    for key, side, old, new in changes:
        typer.echo(f"{key}\t{side}\t{old} -> {new}")
    typer.echo(f"{len(changes)} label(s) differ between round {round_a} and round {round_b}")


def _read_smpl_npz(path: Path) -> dict:
    """SMPL pose (N,72), betas (N,10), trans (N,3) tensors, per-row SMPL genders and frame rate from an npz (SMPL, SMPL-H, SMPL-X or AMASS layout)."""
    import numpy as np
    import torch

    from skelpgt.datasets.smplparams import SmplParamsError, read_smpl_params

    check_npz_file(path)
    with np.load(path, allow_pickle=False) as data:
        try:
            params = read_smpl_params(data)
        except SmplParamsError as err:
            raise typer.BadParameter(f"{path}: {err}") from None
    if len(params.pose) == 0:
        raise typer.BadParameter(f"{path}: field {params.pose_field!r} has 0 rows: nothing to convert")
    as_f32 = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731
    return {"pose": as_f32(params.pose), "betas": as_f32(params.betas), "trans": as_f32(params.trans), "genders": params.genders, "framerate": params.framerate}


def check_npz_file(path: Path) -> None:
    """Raise a one-line error when `path` is missing or not an npz (zip) archive; np.load's own messages mislead."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{path}: is a folder, expected an .npz file") from None
    if head != b"PK\x03\x04":
        raise ValueError(f"{path}: not an .npz archive (starts with {head!r}); write it with numpy.savez")


def _report(problems: list[str]) -> int:
    for line in problems:
        typer.echo(f"error: {line}", err=True)
    return 1


if __name__ == "__main__":
    app()

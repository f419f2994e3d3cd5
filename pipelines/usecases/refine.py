"""A refinement round: round-N labels → SKELify candidates → accept the better → round N+1 release.

For every person side, SKELify starts from the current label (and from the regressor's prediction
when one is given); each candidate and the current label are scored by the same function in the
same unit (`skelpgt.fitting.skelify.acceptance_score`: 2D error in normalised crop units plus
limit and shape priors). The best candidate replaces the label only if its score is strictly
lower. Every candidate's best version is recorded (producer 'skelify', parent = the label it
challenged, accepted true/false), so the store keeps the full history; round N is never touched.
The flip side is refined on the mirrored keypoints, so flip labels stay independent fits.

Camera (`camera=`, recorded in the round's config and so in its digest; schema.md §5): fits and
scores use a per-person perspective camera in normalised crop units (focal f/s, principal point
(c − b)/s for intrinsics f, c px and a crop of centre b, side s px), taken, in order, from
* the source's own intrinsics: `camera.focal_px` / `camera.principal_point_px` of the synthetic
  dataset's dataset.json beside its shards (found as `rounds.find_truth` finds truth.npz);
* with camera='fit-focal' (the default), each image's focal fitted from its people: their current
  labels are 3D bodies with a camera-frame orientation, so with the 2D keypoints of every labelled
  person of an image, `camera.fit_focal` searches log f (grid over ×/÷ 4 around CLIFF's estimate,
  then golden section) for the focal under which all of them project best, each person with its
  own closed-form translation, a person weighted by 1/(its best reprojection error² + floor²) so
  one with noisy keypoints or a bad label counts less, and a weak pull of log f towards CLIFF's
  estimate for images whose people do not pin it down; principal point at the image centre;
* with camera='full-image', CLIFF's estimate from the image size (focal √(W² + H²) px, principal
  point at the image centre; size read from the image's JPEG/PNG header);
* else HSMR's crop camera (f_n = 5000/256, p_n = 0) — HMR2.0 tars carry no intrinsics, and a
  person without an image has no image size.
camera='crop' forces HSMR's crop camera for everyone (the behaviour before cameras were known).
On the synthetic data with its dataset.json hidden (as for HMR2.0 tars), a round from good labels
(50 images, 188 label sides) went from 9.0/7.1 mm MPJPE/PA-MPJPE vs truth to 12.8/9.4 with CLIFF's
estimate (18 % too long there) and to 70.5/28.2 with the crop camera. benchmarks/skelify.py (3)
prints the two side by side (--n 100: 94 labelled people, 188 label sides): change vs round 0
with CLIFF's estimate +3.26/+2.07 mm (stand-in family A), +2.36/+1.23 (B); with the fitted focal
(median 1 % off the true focal) +0.02/+0.03 (A), +0.04/+0.06 (B). From labels with every third
one corrupted the round still repairs them (A: 93.7 → 25.1 mm MPJPE; 23.4 with the dataset's
camera, 25.8 with CLIFF's).
Why: the crop camera cannot represent an off-centre person's projection (it ignores the ray
angle), so fitting 2D below its floor bends the body: measured on the synthetic data, a round
through it cut 2D error ~10× and made labels ~5× worse in 3D (benchmarks/skelify.py).

Steps (`refine_round` is the one sequence; its `RoundSteps` run the parallel ones in this process
or, from the `refine-labels` flow, as tasks on any task runner): predictions of a checkpoint per
release shard (`predict.predict_round`); `plan_round` reads round N and cuts fixed chunks of
`batch_size` persons per side (`ChunkJob`s: plain arrays, so they travel to any worker); `run_chunk` scores a chunk's current labels and
SKELifies it into a candidates file under `<workdir>/refine/<release>/round-<N+1>-<config digest>/`
(atomic, named by a digest of its inputs); `record_round`, the only label-store writer, appends the
candidates chunk by chunk and sets round N+1's labels; `samples.write_part` writes one release shard
(`samples.release_parts`: round N's images per shard, over the sources' image streams); `finish_round`
writes the manifest. A chunk's numbers depend only on its own inputs, so any number of workers
gives the same rows and bytes.

Resume: the label-store rows of a chunk are committed in one append, and appends are idempotent
per (key, side, round, producer, config digest), so a rerun of an interrupted round reads the
chunks that were committed back from the store instead of fitting them again, reuses the
candidates files of chunks that were fitted but not committed, fits the rest, and writes the
release round N+1 from scratch (staged, renamed into place): the same rows, label ids and manifest
bytes as an uninterrupted run. Round N is only read. The candidates files are kept (the round's
audit trail; about 0.5 kB per person side).

Test hooks (one environment lookup per round or chunk): with `SKELPGT_REFINE_KILL_AFTER_CHUNKS=n`
the writer's process SIGKILLs itself right after the n-th newly committed chunk (rows written,
current labels not yet set), the harshest point for a resume; with `SKELPGT_REFINE_KILL_WORKER_ONCE=
<path>` the first chunk fit that finds no file at <path> creates it and SIGKILLs its own process
(a worker lost mid-task).

pve_mean / pve_max of a refined label are its parent's (the SMPL→SKEL fit quality of the person's
source), not recomputed; see schema.md §4 for why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from skelpgt.datasets.atomic import atomic_write_bytes
from skelpgt.datasets.conversion import SIDES
from skelpgt.datasets.labelstore import LabelStore
from skelpgt.datasets.provenance import code_version, digest_of
from skelpgt.datasets.quarantine import read_quarantine
from skelpgt.datasets.records import SkelLabel
from skelpgt.datasets.release import QUARANTINE, RoundFacts, clear_staging, finalize_release, read_manifest, release_lock, resolve_round
from skelpgt.datasets.rounds import dataset_meta
from skelpgt.datasets.samples import part_inputs, quarantined_keys, release_parts, source_images, write_parts
from skelpgt.datasets.shards import ShardInfo
from skelpgt.datasets.workdir import Workdir
from skelpgt.fitting.camera import FOCAL_NORMALISED, crop_intrinsics, fit_focal, full_image_intrinsics, normalise_keypoints
from skelpgt.fitting.keypoints import flip_keypoints_normalised
from skelpgt.fitting.skelify import Skelify, acceptance_score
from skelpgt.model.predict import Predictions

from .predict import predict_round


@dataclass
class RoundReport:
    """What a round changed: counts and mean fit quality before/after (normalised crop units, °)."""

    round: int
    changed: int
    kept: int  # refined, candidate rejected (the current label stays)
    skipped: int  # keypoints unusable: not refined
    kp2d_err_before: float
    kp2d_err_after: float
    violation_before: float
    violation_after: float
    manifest: dict
    from_round: int = 0
    checkpoint: str | None = None  # its sha256: manifest['config']['refine']['checkpoint_digest']


KILL_ENV = "SKELPGT_REFINE_KILL_AFTER_CHUNKS"
KILL_WORKER_ENV = "SKELPGT_REFINE_KILL_WORKER_ONCE"
_ROW_FIELDS = ("label_id", "poses", "betas", "kp2d_err", "limit_violation", "accepted")
CAMERAS = ("source", "fit-focal", "full-image", "crop")  # see the module docstring
# fit-focal's search (`camera.fit_focal`): ×/÷ span around CLIFF's estimate, grid steps, golden-section
# iterations, error floor (crop units), weight of the pull of log f towards CLIFF's estimate.
FOCAL_SEARCH = {"span": 4.0, "steps": 25, "iterations": 24, "floor": 1e-3, "prior": 1.0}
FOCAL_CHUNK = 1024  # people per focal-fit call (whole images; bounds its (people × grid) memory)


@dataclass
class ChunkJob:
    """One chunk of a round: up to `batch_size` persons of one side with all SKELify needs (numpy, so it pickles small).

    kp (B,44,3) normalised crop units (mirrored for 'flip'); focal (B,), principal (B,2) normalised
    crop units (NaN: HSMR's crop camera); poses (B,46) rad and betas (B,10) of the current labels
    (label ids `parent_ids`); pred_* the regressor's starts where `have_pred` (else the label's);
    `committed`: label ids an earlier run already appended for this chunk (then it is only scored)."""

    index: int
    side: str
    keys: list[str]
    parent_ids: np.ndarray
    kp: np.ndarray
    focal: np.ndarray
    principal: np.ndarray
    poses: np.ndarray
    betas: np.ndarray
    pred_poses: np.ndarray | None
    pred_betas: np.ndarray | None
    have_pred: np.ndarray | None
    committed: np.ndarray | None
    digest: str = ""

    def file_name(self) -> str:
        """Name of this chunk's candidate file: position and a digest of every input, so a stale file is never read."""
        return f"{self.index:06d}-{self.side}-{self.digest}.npz"


@dataclass
class RoundPlan:
    """Everything a round needs after reading round N: its config, the chunk jobs, and the release layout.

    `images`: per source, its release stream's images (quarantined persons left out, as
    `samples.release_samples` writes them), each as its labelled person keys; the release is cut
    from that stream and `skips` holds each source's quarantined keys."""

    workdir: Workdir
    release: str
    from_round: int
    manifest: dict
    config: dict
    config_digest: str
    checkpoint_digest: str
    labels: dict
    jobs: list[ChunkJob]
    quarantine: list
    images: list[tuple[str, list[list[str]]]]
    skips: dict[str, set[str]]

    @property
    def to_round(self) -> int:
        return self.from_round + 1

    @property
    def candidates_dir(self) -> Path:
        """Where the chunk tasks leave their candidates (kept: the round's audit trail and its resume cache)."""
        return self.workdir.candidates(self.release, self.to_round, self.config_digest)

    @property
    def samples_per_shard(self) -> int:
        """Round N's images per shard, so round N+1 is cut the same way."""
        return max(1, self.manifest["counts"]["samples"] // max(1, len(self.manifest["shards"])))


@dataclass(frozen=True)
class RefineConfig:
    """One round of release `release`: round `from_round` (None: the latest) → the next.

    `checkpoint`: a regressor checkpoint (.pt) whose predictions give every person side a second
    SKELify start, 'latest' (train-regressor's `last.pt` of that round, when there is one) or None;
    its predictions are made with `models_dir` on `device`. `batch_size`: person sides per chunk;
    `camera`: one of CAMERAS (module docstring)."""

    release: str = "synthetic"
    from_round: int | None = None
    checkpoint: str | None = None
    batch_size: int = 64
    camera: str = "fit-focal"
    models_dir: str | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class RoundSteps:
    """How a round's parallel steps run (in this process: `refine_locally`; the `refine-labels` flow passes its tasks).

    fit(jobs, candidates folder) → candidate files (job order); record(plan, files) → (labels, totals), the only
    store writer; write_shards([(part, labels, skips)], stage, release, round) → ShardInfos (release order; `samples.write_parts`);
    predict(checkpoint, [(release shard, part file)], models_dir, device) → part files (same order)."""

    fit: Callable[[list[ChunkJob], Path], list]
    record: Callable[[RoundPlan, list], tuple[dict, dict]]
    write_shards: Callable[[list, Path, str, int], list[ShardInfo]]
    predict: Callable[[str, list, str | None, str], list] | None = None


def refine_locally(skelify: Skelify) -> RoundSteps:
    """RoundSteps that run one step after the other in this process, fitting with `skelify`."""
    return RoundSteps(lambda jobs, folder: [run_chunk(job, skelify, folder) for job in jobs], record_round, write_parts)


def refine_round(
    workdir: str | os.PathLike, config: RefineConfig, skelify: Skelify, steps: RoundSteps | None = None, *,
    predictions: Predictions | None = None, checkpoint_digest: str = "",
) -> RoundReport:  # fmt: skip
    """Refine round N of `config.release` into round N+1 (label store + release) → RoundReport.

    The one path of a round, whoever runs it: predictions of `config.checkpoint` (if any), `plan_round`,
    `steps.fit` per chunk, `steps.record`, `steps.write_shards` under the release lock, `finish_round`.
    `skelify` plans the round (and fits it with the default `refine_locally`). `predictions` (with the
    `checkpoint_digest` they came from) are starts made elsewhere, used when `config.checkpoint` is None.
    """
    workdir = Workdir.of(workdir)
    steps = steps or refine_locally(skelify)
    start = workdir.latest_round(config.release, config.from_round)
    checkpoint = round_checkpoint(workdir, config, start)
    if checkpoint is not None:
        predictions, checkpoint_digest = predict_round(workdir, config.release, start, checkpoint, config.models_dir, config.device, steps.predict)
    plan = plan_round(workdir, config.release, start, skelify, predictions, checkpoint_digest, config.batch_size, config.camera)
    files = steps.fit(plan.jobs, plan.candidates_dir)
    new_labels, totals = steps.record(plan, files)
    with release_lock(workdir, config.release):
        stage = clear_staging(workdir, config.release, plan.to_round)
        per_image = dict(plan.images)
        shards = [(part, *part_inputs(per_image, plan.skips, part, new_labels)) for part in release_parts(plan.images, plan.samples_per_shard)]
        report = finish_round(plan, steps.write_shards(shards, stage, config.release, plan.to_round), totals)
    return dataclasses.replace(report, checkpoint=checkpoint)


def round_checkpoint(workdir: Workdir, config: RefineConfig, round: int) -> str | None:
    """The checkpoint a round starts its second candidates from: the given file, train-regressor's for 'latest' (if any), or None."""
    if config.checkpoint == "latest":
        found = workdir.checkpoints(config.release, round) / "last.pt"
        return str(found) if found.is_file() else None
    if config.checkpoint is not None and not Path(config.checkpoint).is_file():
        raise FileNotFoundError(f"{config.checkpoint}: no such checkpoint file")
    return config.checkpoint


def plan_round(
    workdir: str | os.PathLike,
    release: str,
    from_round: int,
    skelify: Skelify,
    predictions: Predictions | None = None,
    checkpoint_digest: str = "",
    batch_size: int = 64,
    camera: str = "fit-focal",
) -> RoundPlan:
    """Read round `from_round` (labels, sources, cameras) → the round's config and its chunk jobs (fixed
    chunks of `batch_size` persons per side, so reruns and any number of workers see the same numbers).

    With `predictions`, every person side with a prediction gets a second SKELify candidate
    started from it (`checkpoint_digest`: its checkpoint's sha256, recorded on every new row); the
    better-scoring candidate challenges the current label. `camera`: one of CAMERAS, where the
    per-person intrinsics come from (module docstring).
    """
    if camera not in CAMERAS:
        raise ValueError(f"camera must be one of {CAMERAS}, got {camera!r}")
    workdir = Workdir.of(workdir)
    folder = resolve_round(workdir.release(release), from_round)
    manifest = read_manifest(folder)
    sources = manifest["config"]["sources"]
    config = {
        "skelify": vars(skelify.config), "checkpoint_digest": checkpoint_digest, "from_round": from_round,
        "camera": {"mode": camera, "sources": [_describe_camera(s, camera) for s in sources]},
    }  # fmt: skip
    config_digest = digest_of(config)
    with LabelStore(workdir.labels, "r") as store:
        labels = store.skel_labels(from_round)
        committed = _committed_rows(store, from_round + 1, config_digest)
    quarantine = read_quarantine(folder / QUARANTINE)
    skips = dict(zip(sources, quarantined_keys(sources, quarantine)))
    people, sizes, images = _read_people(sources, labels, skips)
    keys = sorted(people)
    intrinsics = intrinsics_px(people, camera, sizes)
    if camera == "fit-focal":
        intrinsics = fit_image_focals(people, labels, skelify, intrinsics, declared=intrinsics_px(people, "source"))
    jobs = []
    for side_index, side in enumerate(SIDES):
        for start in range(0, len(keys), batch_size):
            chunk = [k for k in keys[start : start + batch_size] if labels[k][side_index] is not None]
            if chunk:
                jobs.append(_job(len(jobs), chunk, side, side_index, people, labels, intrinsics, predictions, committed, config_digest))
    return RoundPlan(workdir, release, from_round, manifest, config, config_digest, checkpoint_digest, labels, jobs, quarantine, images, skips)


def _read_people(sources: list[str], labels: dict, skips: dict) -> tuple[dict, dict, list[tuple[str, list[list[str]]]]]:
    """One pass over the sources → ({labelled person key: PersonRecord without its image bytes}, {person key: image (W, H) px
    or None}, [(source, [labelled keys of each image of its release stream])]). Image bytes are dropped as they are
    read: the plan's memory grows with the persons, not with the release's images."""
    people: dict = {}
    sizes: dict = {}
    images = []
    for source in sources:
        per_image = []
        for _, persons in source_images(source, skips[source]):
            kept = [r for r in persons if r.key in labels and r.key not in people]  # a key in two sources: the release kept the first
            if kept:
                size = image_size(kept[0].image)
                for r in kept:
                    people[r.key], sizes[r.key] = dataclasses.replace(r, image=b""), size
            per_image.append([r.key for r in persons if r.key in labels])
        images.append((source, per_image))
    return people, sizes, images


def _job(index, chunk, side, side_index, people, labels, intrinsics, predictions, committed, config_digest) -> ChunkJob:
    """The ChunkJob of persons `chunk` on `side` (inputs gathered exactly as SKELify will see them)."""
    current = [labels[k][side_index] for k in chunk]
    focal, principal = crop_camera(chunk, side, people, intrinsics)
    poses = np.stack([c.poses for c in current])
    betas = np.stack([c.betas for c in current])
    pred = [predictions.get(k, {}).get(side) for k in chunk] if predictions else []
    have = np.array([p is not None for p in pred], dtype=bool)
    pred_poses = pred_betas = have_pred = None
    if have.any():
        # Persons without a prediction start from their label again (the batch keeps its shape, so
        # every person's numbers stay independent of who else has a prediction) and lose the vote.
        pred_poses = np.stack([np.asarray(p[0], np.float32) if p is not None else poses[j] for j, p in enumerate(pred)]).astype(np.float32)
        pred_betas = np.stack([np.asarray(p[1], np.float32) if p is not None else betas[j] for j, p in enumerate(pred)]).astype(np.float32)
        have_pred = have
    parent_ids = np.array([c.label_id for c in current], np.int64)
    ids = [committed.get((k, side, int(i))) for k, i in zip(chunk, parent_ids)]
    job = ChunkJob(
        index, side, chunk, parent_ids, _keypoints(chunk, side, people).numpy(), focal.numpy(), principal.numpy(),
        poses, betas, pred_poses, pred_betas, have_pred, None if any(i is None for i in ids) else np.array(ids, np.int64),
    )  # fmt: skip
    digest = hashlib.sha256(config_digest.encode() + "\0".join(chunk).encode() + side.encode())
    for a in (parent_ids, job.kp, job.focal, job.principal, poses, betas, pred_poses, pred_betas, have_pred):
        digest.update(b"-" if a is None else np.ascontiguousarray(a).tobytes())
    job.digest = digest.hexdigest()[:16]
    return job


def score_and_fit(job: ChunkJob, skelify: Skelify) -> dict[str, np.ndarray]:
    """A chunk's current labels scored ('before_*') and, unless already committed, its best SKELify candidate
    and the accept decision: poses (B,46), betas (B,10), kp2d_err, limit_violation (°), accepted (B,)."""
    to = lambda a: torch.from_numpy(a).to(skelify.device)  # noqa: E731
    kp, cam, poses, betas = to(job.kp), (to(job.focal), to(job.principal)), to(job.poses), to(job.betas)
    before = skelify.evaluate(kp, poses, betas, None, *cam)
    out = {"before_kp2d_err": before.kp2d_err, "before_violation": before.limit_violation}
    if job.committed is None:
        pred = None if job.have_pred is None else (to(job.pred_poses), to(job.pred_betas), to(job.have_pred))
        best = _best_candidate(skelify, kp, cam, poses, betas, pred)
        out.update(best, accepted=skelify.accept(kp, before, best["poses"], best["betas"], best["kp2d_err"], best["score"]))
        del out["score"]
    return {name: value.cpu().numpy() for name, value in out.items()}


def run_chunk(job: ChunkJob, skelify: Skelify, folder: str | os.PathLike) -> Path:
    """`score_and_fit` one job into `folder`/<job file> (atomic; an existing file of the same inputs is reused) → its path."""
    path = Path(folder) / job.file_name()
    if not path.is_file():
        _kill_worker_once()
        buf = io.BytesIO()
        np.savez(buf, **score_and_fit(job, skelify))
        atomic_write_bytes(path, buf.getvalue(), fsync=False)  # a torn file cannot be: rename is atomic; lost = refitted
    return path


def _kill_worker_once() -> None:
    """Test hook (module docstring): die like a lost worker, once per marker file."""
    marker = os.environ.get(KILL_WORKER_ENV)
    if marker:
        try:
            with open(marker, "x"):
                pass
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def record_round(plan: RoundPlan, files: list[str | os.PathLike]) -> tuple[dict, dict]:
    """The round's only store writer: append each chunk's candidates (in job order; chunks an earlier run
    committed are read back), set round N+1's current labels → ({key: [orig, flip] SkelLabel}, totals)."""
    new_labels = {key: list(plan.labels[key]) for _, per_image in plan.images for image in per_image for key in image}
    totals = {"changed": 0, "kept": 0, "skipped": 0, "before": [], "after": [], "vb": [], "va": []}
    kill_after = int(os.environ.get(KILL_ENV) or 0)
    fitted = 0
    version = code_version()
    with LabelStore(plan.workdir.labels, "a") as store:
        for job, file in zip(plan.jobs, files, strict=True):
            with np.load(file) as data:
                cand = dict(data)
            current = [plan.labels[k][SIDES.index(job.side)] for k in job.keys]
            ids = job.committed
            if ids is None:
                ids = store.append(
                    {
                        "sample_key": job.keys, "side": job.side, "round": plan.to_round, "producer": "skelify",
                        "parent_label_id": job.parent_ids, "poses": cand["poses"], "betas": cand["betas"],
                        "trans": np.stack([c.trans for c in current]), "kp2d_err": cand["kp2d_err"],
                        "limit_violation": cand["limit_violation"], "accepted": cand["accepted"],
                        "config_digest": plan.config_digest, "code_version": version, "checkpoint_digest": plan.checkpoint_digest,
                        "source_digest": _source_digests(store, job.parent_ids.tolist()),
                    }
                )  # fmt: skip
                fitted += 1
                if kill_after and fitted >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)  # test hook (module docstring)
            # What the store holds is what gets released, whether fitted now or by an earlier run.
            rows = _rows_in_order(store, ids.tolist())
            store.set_current(plan.to_round, [i if a else c.label_id for i, a, c in zip(ids.tolist(), rows["accepted"].tolist(), current)])
            _tally(totals, job, cand, current, rows, new_labels)
        store.carry_forward(plan.from_round, plan.to_round)  # unlabelled or skipped persons keep their label
    return new_labels, totals


def finish_round(plan: RoundPlan, infos: list[ShardInfo], totals: dict) -> RoundReport:
    """Manifest + quarantine of round N+1 from its staged shards (the caller holds the release lock) → the round's report."""
    config = {**plan.manifest["config"], "refine": plan.config}
    facts = RoundFacts(plan.release, plan.to_round, plan.from_round, config, code_version(), plan.quarantine)
    manifest = finalize_release(plan.workdir, facts, shard_infos=infos, overwrite=True)
    mean = lambda a: float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")  # noqa: E731
    return RoundReport(
        plan.to_round, totals["changed"], totals["kept"], totals["skipped"],
        mean(totals["before"]), mean(totals["after"]), mean(totals["vb"]), mean(totals["va"]), manifest, plan.from_round,
    )  # fmt: skip


def _committed_rows(store: LabelStore, round: int, config_digest: str) -> dict[tuple[str, str, int], int]:
    """(person key, side, parent id) → label id of the SKELify rows this round's config already committed."""
    rows = store.rows_of_round(round, ("label_id", "sample_key", "side", "producer", "config_digest", "parent_label_id"))
    mine = (rows["producer"].astype(str) == "skelify") & (rows["config_digest"].astype(str) == config_digest)
    return {
        (str(k), str(s), int(p)): int(i)
        for k, s, p, i in zip(rows["sample_key"][mine], rows["side"][mine], rows["parent_label_id"][mine], rows["label_id"][mine])
    }


def _source_digests(store: LabelStore, parent_ids: list[int]) -> list[str]:
    """Source digest of each parent label: a refined label comes from the same source data."""
    got = store.get(parent_ids, ("label_id", "source_digest"))
    return got["source_digest"][np.searchsorted(got["label_id"], np.asarray(parent_ids, np.int64))].astype(str).tolist()


def _rows_in_order(store: LabelStore, ids: list[int]) -> dict[str, np.ndarray]:
    """Store rows of `ids`, in the order of `ids` (get() returns them sorted by id)."""
    got = store.get(ids, _ROW_FIELDS)
    order = np.searchsorted(got["label_id"], np.asarray(ids, np.int64))
    return {name: values[order] for name, values in got.items()}


def _keypoints(chunk: list[str], side: str, people: dict) -> torch.Tensor:
    """Target keypoints (B,44,3) of one side in normalised crop units (mirrored for 'flip')."""
    recs = [people[k] for k in chunk]
    kp = normalise_keypoints(*(torch.from_numpy(np.stack([getattr(r, f) for r in recs])) for f in ("keypoints_2d", "center", "scale")))
    return flip_keypoints_normalised(kp) if side == "flip" else kp


def _source_intrinsics(source: str) -> tuple[float, list[float]] | None:
    """(focal px, principal point [cx, cy] px) of a source file from its dataset's dataset.json, or None."""
    meta = dataset_meta(source)
    if meta is None:
        return None
    cam = json.loads(meta.read_text()).get("camera") or {}
    focal, principal = cam.get("focal_px"), cam.get("principal_point_px")
    if cam.get("model", "pinhole") != "pinhole" or focal is None or principal is None:
        return None
    return float(focal), [float(v) for v in principal]


def _describe_camera(source: str, mode: str) -> dict:
    """What camera a source's people are fitted with (recorded in the round's config)."""
    known = None if mode == "crop" else _source_intrinsics(source)
    if known is not None:
        return {"camera": "dataset.json", "focal_px": known[0], "principal_point_px": known[1]}
    if mode == "fit-focal":
        return {
            "camera": "fit-focal", "focal": "per image: argmin of its labelled people's reprojection cost over log f (fitting.camera.fit_focal)",
            "search": FOCAL_SEARCH, "start": "sqrt(W^2 + H^2) px", "principal_point": "image centre (W/2, H/2) px",
        }  # fmt: skip
    if mode == "full-image":
        return {"camera": "full-image", "focal": "sqrt(W^2 + H^2) px", "principal_point": "image centre (W/2, H/2) px"}
    return {"camera": "crop", "focal_normalised": FOCAL_NORMALISED, "principal_point_normalised": [0.0, 0.0]}


def intrinsics_px(people: dict, mode: str, sizes: dict | None = None) -> dict[str, tuple[float, float, float]]:
    """{person key: PersonRecord} → {person key: full-image (focal, cx, cy) px} where known under `mode` (absent: HSMR's crop camera).

    `sizes` {person key: (W, H) px or None}: the image sizes when the records no longer hold their images."""
    if mode == "crop":
        return {}
    per_source: dict[str, tuple[float, list[float]] | None] = {}
    out = {}
    for key, rec in people.items():
        if rec.source_file not in per_source:
            per_source[rec.source_file] = _source_intrinsics(rec.source_file)
        known = per_source[rec.source_file]
        if known is not None:
            out[key] = (known[0], *known[1])
        elif mode in ("full-image", "fit-focal"):
            size = image_size(rec.image) if sizes is None else sizes.get(key)
            if size is not None:
                focal, principal = full_image_intrinsics(torch.tensor([size[0]]), torch.tensor([size[1]]))
                out[key] = (float(focal[0]), float(principal[0, 0]), float(principal[0, 1]))
    return out


def fit_image_focals(people: dict, labels: dict, skelify: Skelify, intrinsics: dict, declared: dict) -> dict[str, tuple[float, float, float]]:
    """`intrinsics` {key: (focal, cx, cy) px} with the focal of every image not in `declared` fitted from its people.

    Each image's people with an orig label (`labels`: {key: (orig, flip) SkelLabel | None}) give
    3D bodies (the label's camera-frame q, β) and 2D keypoints; `camera.fit_focal` finds the focal
    under which all of them project best, each with its own closed-form translation, starting
    from the estimate in `intrinsics`. People of one image share the fitted focal (flip sides too:
    mirroring keeps the focal).
    """
    images: dict[tuple[str, str], list[str]] = {}
    for key in sorted(intrinsics):
        if key not in declared:
            images.setdefault((people[key].source_file, people[key].image_key), []).append(key)
    labelled = {image: [k for k in keys if labels.get(k, (None,))[0] is not None] for image, keys in images.items()}
    labelled = {image: keys for image, keys in labelled.items() if keys}
    focals: dict[tuple[str, str], float] = {}
    batch: dict[tuple[str, str], list[str]] = {}
    filled = 0
    for index, (image, keys) in enumerate(labelled.items()):
        batch[image], filled = keys, filled + len(keys)
        if filled >= FOCAL_CHUNK or index == len(labelled) - 1:
            focals.update(_fit_focal_batch(batch, people, labels, skelify, intrinsics))
            batch, filled = {}, 0
    out = dict(intrinsics)
    for image, keys in images.items():
        for key in keys:  # unlabelled people of a fitted image share its focal too
            if image in focals:
                out[key] = (focals[image], *intrinsics[key][1:])
    return out


def _fit_focal_batch(images: dict, people: dict, labels: dict, skelify: Skelify, intrinsics: dict) -> dict[tuple[str, str], float]:
    """One `camera.fit_focal` call over whole images ({image: its labelled person keys}) → {image: fitted focal px}."""
    keys = [k for image_keys in images.values() for k in image_keys]
    group = torch.tensor([i for i, image_keys in enumerate(images.values()) for _ in image_keys])
    px = torch.tensor([intrinsics[k] for k in keys], dtype=torch.float64)
    kp = torch.from_numpy(np.stack([people[k].keypoints_2d for k in keys])).double()
    kp = torch.where(torch.isfinite(kp).all(-1, keepdim=True), kp, 0.0)  # a non-finite keypoint counts as missing
    kp = skelify.weighted(torch.cat((kp[..., :2] - px[:, None, 1:], kp[..., 2:3]), dim=-1))
    q = torch.from_numpy(np.stack([labels[k][0].poses for k in keys]))
    betas = torch.from_numpy(np.stack([labels[k][0].betas for k in keys]))
    size = torch.from_numpy(np.stack([people[k].scale for k in keys])).double().amax(-1) * 200.0
    start = torch.tensor([intrinsics[image_keys[0]][0] for image_keys in images.values()], dtype=torch.float64)
    focal = fit_focal(skelify.relative_keypoints(q, betas).cpu(), kp, size, group, start, **FOCAL_SEARCH)  # the search runs on the CPU
    return {image: float(f) for image, f in zip(images, focal.tolist())}


def crop_camera(chunk: list[str], side: str, people: dict, intrinsics: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Persons' focal (B,) and principal point (B,2) in normalised crop units (NaN where unknown: crop camera); x mirrored for 'flip'."""
    px = torch.tensor([intrinsics.get(k, (float("nan"),) * 3) for k in chunk], dtype=torch.float64)
    center = torch.from_numpy(np.stack([people[k].center for k in chunk])).double()
    scale = torch.from_numpy(np.stack([people[k].scale for k in chunk])).double()
    focal, principal = crop_intrinsics(px[:, 0], px[:, 1:], center, scale)
    if side == "flip":  # the mirrored image's camera: x_n → −x_n, so p_x → −p_x (focal unchanged)
        principal = principal * principal.new_tensor([-1.0, 1.0])
    return focal.float(), principal.float()


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) px of an encoded image, read from its header (PIL opens lazily), or None if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _best_candidate(skelify, kp, cam, poses, betas, pred) -> dict[str, torch.Tensor]:
    """SKELify from the current label and, where `pred` (q, β, have) has one, from the prediction; the better per person.

    Each start gets its translation solved under the person's camera `cam` (focal, principal point)."""
    candidates = [skelify.fit(kp, poses, betas, None, *cam)]
    if pred is not None:
        q, b, have = pred
        fit = skelify.fit(kp, q, b, None, *cam)
        fit.score = torch.where(have, fit.score, torch.full_like(fit.score, float("inf")))  # no prediction: loses the vote
        candidates.append(fit)
    scores = torch.stack([torch.nan_to_num(c.score, nan=float("inf")) for c in candidates])
    best_index = scores.argmin(0)  # ties go to the label-started candidate
    rows = torch.arange(len(kp), device=kp.device)
    return {f: torch.stack([getattr(c, f) for c in candidates])[best_index, rows] for f in ("poses", "betas", "kp2d_err", "limit_violation", "score")}


def _tally(totals, job: ChunkJob, cand: dict, current, rows, new_labels) -> None:
    """Count one chunk's decisions and put its accepted labels into the round's label set."""
    score = acceptance_score(torch.from_numpy(rows["kp2d_err"]), torch.from_numpy(rows["limit_violation"]), torch.from_numpy(rows["betas"]))
    side_index = SIDES.index(job.side)
    for j, key in enumerate(job.keys):
        chosen = bool(rows["accepted"][j])
        skipped = not bool(torch.isfinite(score[j]))
        totals["skipped"] += skipped
        totals["changed" if chosen else "kept"] += not skipped
        totals["before"].append(float(cand["before_kp2d_err"][j]))
        totals["vb"].append(float(cand["before_violation"][j]))
        totals["after"].append(float(rows["kp2d_err"][j] if chosen else cand["before_kp2d_err"][j]))
        totals["va"].append(float(rows["limit_violation"][j] if chosen else cand["before_violation"][j]))
        if chosen:
            old = current[j]
            new_labels[key][side_index] = SkelLabel(
                label_id=int(rows["label_id"][j]), poses=rows["poses"][j], betas=rows["betas"][j], trans=old.trans,
                pve_mean=old.pve_mean, pve_max=old.pve_max, kp2d_err=float(rows["kp2d_err"][j]),
            )  # fmt: skip

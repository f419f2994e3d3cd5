"""Release samples: a source shard's images, in stored order, with their persons' SKEL labels; release shards cut from them.

A release round's shards are runs of the sources' image streams (`release_parts`: `size` images
each, in source order), so each shard can be written on its own (`write_part`, e.g. one task per
shard on any worker) and the shards are the same bytes as one writer streaming every image.
"""

from __future__ import annotations

import itertools
import os

from .quarantine import QuarantineEntry
from .readers import read_source
from .records import SkelLabel
from .shards import OutSample, ShardInfo, ShardWriter, make_person

# One release shard: [(source, first image, end image)] runs of the sources' image streams.
Part = list[tuple[str, int, int]]


def source_images(source: str, skip: set[str]):
    """(image key, persons in index order) of a source shard, in stored order, leaving out the `skip` person keys."""
    current, persons = None, []
    for rec in read_source(source):
        if rec.key in skip:
            continue
        if rec.image_key != current and persons:
            yield current, persons
            persons = []
        current = rec.image_key
        persons.append(rec)
    if persons:
        yield current, persons


def quarantined_keys(sources: list[str], quarantine: list[QuarantineEntry]) -> list[set[str]]:
    """Per source, the person keys its quarantine entries leave out (per source: the same key may be
    quarantined in one source, as a duplicate, and kept in another)."""
    by_file: dict[str, set[str]] = {}
    for e in quarantine:
        by_file.setdefault(e.file, set()).add(e.key)
    return [by_file.get(str(source), set()) for source in sources]


def release_samples_of(images, labels: dict, *, round: int, release: str):
    """(image key, persons) of `source_images` → OutSamples with their labels ({key: (orig, flip) SkelLabel | None}; unlabelled persons kept)."""
    for key, persons in images:
        dicts = [make_person(p, *labels.get(p.key, (None, None)), round=round, release=release) for p in persons]
        yield OutSample(key, persons[0].image, persons[0].image_ext, dicts)


def release_samples(
    sources: list[str], labels: dict[str, tuple[SkelLabel | None, SkelLabel | None]], *, round: int, release: str, skip: set[str] = frozenset(),
    quarantine: list[QuarantineEntry] = (),
):
    """OutSamples of the source images with their labels (unlabelled persons kept; `skip` keys and the `quarantine` entries of each source left out)."""
    for source, quarantined in zip(sources, quarantined_keys(sources, quarantine)):
        yield from release_samples_of(source_images(source, set(skip) | quarantined), labels, round=round, release=release)


def image_keys(sources: list[str], skips: dict[str, set[str]], labels: dict) -> list[tuple[str, list[list[str]]]]:
    """Per source (in order), the labelled person keys of each image of its release stream (`skips` {source: keys} left out)."""
    return [(source, [[r.key for r in persons if r.key in labels] for _, persons in source_images(source, skips[source])]) for source in sources]


def release_parts(images: list[tuple[str, list]], size: int) -> list[Part]:
    """Per source its images (`image_keys`) → the release shards as Parts of `size` images each, over the sources in order."""
    parts: list[Part] = []
    filled = size
    for source, per_image in images:
        start = 0
        while start < len(per_image):
            if filled == size:
                parts.append([])
                filled = 0
            take = min(size - filled, len(per_image) - start)
            parts[-1].append((source, start, start + take))
            start, filled = start + take, filled + take
    return parts


def part_inputs(per_image: dict[str, list[list[str]]], skips: dict[str, set[str]], part: Part, labels: dict) -> tuple[dict, dict]:
    """What one shard's writer needs, and no more (it may run on another machine): its persons' labels
    ({key: (orig, flip)}) and its sources' skipped keys; `per_image`: dict of `image_keys`."""
    keys = [k for source, first, end in part for image in per_image[source][first:end] for k in image]
    return {k: labels[k] for k in keys}, {source: skips[source] for source, _, _ in part}


def write_part(part: Part, labels: dict, skips: dict, stage: str | os.PathLike, *, index: int, release: str, round: int) -> ShardInfo:
    """Release shard `index` in `stage`: the images of `part` with their labels; `skips`: {source: keys left out}."""
    with ShardWriter(stage, prefix=release, samples_per_shard=1 << 30, start_index=index) as writer:
        for source, first, end in part:
            images = itertools.islice(source_images(source, skips[source]), first, end)
            for sample in release_samples_of(images, labels, round=round, release=release):
                writer.write(sample)
    return writer.infos[0]


def write_parts(shards: list[tuple[Part, dict, dict]], stage: str | os.PathLike, release: str, round: int) -> list[ShardInfo]:
    """[(part, labels, skips)] → their shards written one after the other in this process (indices in order) → ShardInfos."""
    return [write_part(part, labels, skips, stage, index=i, release=release, round=round) for i, (part, labels, skips) in enumerate(shards)]

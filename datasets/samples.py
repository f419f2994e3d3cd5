"""Release samples: a source shard's images, in stored order, with their persons' SKEL labels."""

from __future__ import annotations

from .quarantine import QuarantineEntry
from .readers import read_source
from .records import SkelLabel
from .shards import OutSample, make_person


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

"""skelpgt.datasets: source readers, HSMR-compatible SKEL shards, the label store and releases.

Field reference of the shards and the label store: datasets/schema.md.
"""

from .labelstore import LabelStore, open_store
from .quarantine import Quarantine, QuarantineEntry, read_quarantine
from .readers import ReadCounts, read_hmr2_tar, read_npz, read_source
from .records import PersonRecord, SkelLabel, person_key, split_person_key
from .release import (
    RoundFacts,
    finalize_release,
    list_rounds,
    open_release,
    open_release_persons,
    read_manifest,
    release_quarantine,
    resolve_round,
    round_dir,
    write_release,
)
from .shards import OutSample, ShardInfo, ShardWriter, iter_shard, make_person, write_shards
from .summary import format_lineage, inspect_path, lineage
from .verify import VerifyReport, verify_release

__all__ = [
    "LabelStore",
    "OutSample",
    "PersonRecord",
    "Quarantine",
    "QuarantineEntry",
    "ReadCounts",
    "RoundFacts",
    "ShardInfo",
    "ShardWriter",
    "SkelLabel",
    "VerifyReport",
    "finalize_release",
    "format_lineage",
    "inspect_path",
    "iter_shard",
    "lineage",
    "list_rounds",
    "make_person",
    "open_release",
    "open_release_persons",
    "open_store",
    "person_key",
    "read_hmr2_tar",
    "read_manifest",
    "read_npz",
    "read_quarantine",
    "read_source",
    "release_quarantine",
    "resolve_round",
    "round_dir",
    "split_person_key",
    "verify_release",
    "write_release",
    "write_shards",
]

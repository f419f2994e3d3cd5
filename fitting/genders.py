"""Per-person SMPL gender: the same conversion run with the SMPL model of each person's gender.

AMASS and other mocap sources say which SMPL body (male, female, neutral) a person's parameters
belong to; the target mesh must come from that model, so persons are grouped by gender and each
group converted with a Converter whose SMPL (and config digest) is that gender's.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Callable

import torch
from torch import Tensor

from .convert import ConversionResult, Converter
from .smpl import load_smpl

_CACHE: "weakref.WeakKeyDictionary[Converter, dict[str, Converter]]" = weakref.WeakKeyDictionary()


def converter_for_gender(converter: Converter, gender: str) -> Converter:
    """`converter` with the SMPL model of `gender` ('' = the converter's own); loaded once per converter."""
    if not gender or gender == converter.config.smpl_gender:
        return converter
    per = _CACHE.setdefault(converter, {})
    if gender not in per:
        if converter.models_dir is None:
            raise ValueError(f"a person has SMPL gender {gender!r}: build the Converter with Converter.from_models_dir (or models_dir=) so that model can be loaded")
        config = dataclasses.replace(converter.config, smpl_gender=gender)
        smpl = load_smpl(converter.models_dir, gender)
        per[gender] = Converter(smpl, converter.skel, config, converter.keypoints, device=converter.device, models_dir=converter.models_dir)
    return per[gender]


def gender_groups(genders: list[str], default: str) -> dict[str, Tensor]:
    """Row ids (long) per SMPL gender, '' rows counted under `default`; genders in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, g in enumerate(genders):
        groups.setdefault(g or default, []).append(i)
    return {g: torch.tensor(rows, dtype=torch.long) for g, rows in groups.items()}


def convert_by_gender(
    converter: Converter, genders: list[str], run: Callable[[Converter, Tensor], tuple[ConversionResult, ...]]
) -> tuple[tuple[ConversionResult, ...], list[str]]:
    """`run(converter of a gender, row ids)` per gender group → its results for all rows in row order, and each row's config digest."""
    groups = gender_groups(genders, converter.config.smpl_gender)
    outs, digests = [], [""] * len(genders)
    for g, rows in groups.items():
        outs.append(run(converter_for_gender(converter, g), rows))
        for i in rows.tolist():
            digests[i] = outs[-1][0].config_digest
    order = torch.argsort(torch.cat(list(groups.values())))
    return tuple(take_rows(ConversionResult.concat(list(parts)), order) for parts in zip(*outs)), digests


def take_rows(result: ConversionResult, index: Tensor) -> ConversionResult:
    """The rows `index` (long) of a ConversionResult, in that order."""
    rows = index.tolist()
    picked = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, Tensor):
            picked[f.name] = value[index]
        elif isinstance(value, list):  # per-row strings: reason, flags
            picked[f.name] = [value[i] for i in rows]
    return dataclasses.replace(result, **picked)

"""Weight conversion between the official MedNeXt state_dict layout (ours) and MONAI's."""
from __future__ import annotations

import re
from collections import OrderedDict

import torch

# (official pattern, MONAI pattern) for the parts whose names differ; {i} is the stage index.
_STAGE_RULES = [
    (re.compile(r"^enc_block_(\d)\."), re.compile(r"^enc_stages\.(\d)\.")),
    (re.compile(r"^down_(\d)\."), re.compile(r"^down_blocks\.(\d)\.")),
    (re.compile(r"^up_(\d)\."), re.compile(r"^up_blocks\.(\d)\.")),
    (re.compile(r"^dec_block_(\d)\."), re.compile(r"^dec_stages\.(\d)\.")),
    (re.compile(r"^out_([1-4])\."), re.compile(r"^out_blocks\.(\d)\.")),
]
_OFFICIAL_NAMES = ["enc_block_{}.", "down_{}.", "up_{}.", "dec_block_{}.", "out_{}."]
_MONAI_NAMES = ["enc_stages.{}.", "down_blocks.{}.", "up_blocks.{}.", "dec_stages.{}.", "out_blocks.{}."]
# Stage index maps: identity for the encoder, reversed (3 - i) for the decoder, 4 - k for DS heads.
# Each is its own inverse, so the same maps serve both directions.
_INDEX_MAPS = [lambda i: i, lambda i: i, lambda i: 3 - i, lambda i: 3 - i, lambda k: 4 - k]
_GRN = [(".grn_gamma", ".global_resp_gamma"), (".grn_beta", ".global_resp_beta")]

# Official state_dict order of top-level modules (dummy_tensor is a direct parameter, hence first).
_OFFICIAL_ORDER = (["dummy_tensor", "stem"]
                   + [f"{p}_{i}" for i in range(4) for p in ("enc_block", "down")]
                   + ["bottleneck"]
                   + [f"{p}_{i}" for i in reversed(range(4)) for p in ("up", "dec_block")]
                   + [f"out_{i}" for i in range(5)])
# MONAI's module registration order; ModuleList entries then sort by their index.
_MONAI_ORDER = ["stem", "enc_stages", "down_blocks", "bottleneck", "up_blocks", "dec_stages", "out_0", "out_blocks"]


def _rename_prefix(key: str, patterns, names, index_map) -> str:
    for pattern, name, remap in zip(patterns, names, index_map):
        match = pattern.match(key)
        if match:
            return name.format(remap(int(match.group(1)))) + key[match.end():]
    return key


def _official_rank(key: str) -> int:
    top = key.split(".")[0]
    return _OFFICIAL_ORDER.index(top) if top in _OFFICIAL_ORDER else len(_OFFICIAL_ORDER)


def _monai_rank(key: str) -> tuple:
    parts = key.split(".")
    top = _MONAI_ORDER.index(parts[0]) if parts[0] in _MONAI_ORDER else len(_MONAI_ORDER)
    index = int(parts[1]) if parts[0] in ("enc_stages", "down_blocks", "up_blocks", "dec_stages", "out_blocks") else 0
    return top, index


def convert_state_dict(state_dict: dict, source: str | None = None, target: str | None = None) -> OrderedDict:
    """Convert a MedNeXt state_dict between layouts.

    ``convert_state_dict(sd, source='monai')`` turns MONAI keys into the official ones (adding
    ``dummy_tensor``, ordered like the official model); ``convert_state_dict(sd, target='monai')`` does
    the reverse (dropping ``dummy_tensor``). MONAI's B/M/L have other down-block shapes: load their
    converted weights into a model built with ``monai_compat=True``.
    """
    if (source, target) not in (("monai", None), (None, "monai"), ("monai", "official"), ("official", "monai")):
        raise ValueError("use convert_state_dict(sd, source='monai') or convert_state_dict(sd, target='monai')")
    official_patterns = [rule[0] for rule in _STAGE_RULES]
    monai_patterns = [rule[1] for rule in _STAGE_RULES]
    out = OrderedDict()
    if source == "monai":
        if any(key == "dummy_tensor" or key.startswith("enc_block_") for key in state_dict):
            raise ValueError("this state_dict already has official MedNeXt keys (enc_block_*, dummy_tensor)")
        out["dummy_tensor"] = torch.tensor([1.0])
        for key, value in state_dict.items():
            new = _rename_prefix(key, monai_patterns, _OFFICIAL_NAMES, _INDEX_MAPS)
            for ours, theirs in _GRN:
                new = new.replace(theirs, ours)
            out[new] = value
        return OrderedDict(sorted(out.items(), key=lambda item: _official_rank(item[0])))
    if any(key.startswith("enc_stages.") for key in state_dict):
        raise ValueError("this state_dict already has MONAI MedNeXt keys (enc_stages.*)")
    for key, value in state_dict.items():
        if key == "dummy_tensor":
            continue
        new = _rename_prefix(key, official_patterns, _MONAI_NAMES, _INDEX_MAPS)
        for ours, theirs in _GRN:
            new = new.replace(ours, theirs)
        out[new] = value
    return OrderedDict(sorted(out.items(), key=lambda item: _monai_rank(item[0])))


def is_monai_state_dict(state_dict: dict) -> bool:
    return any(key.startswith("enc_stages.") for key in state_dict)

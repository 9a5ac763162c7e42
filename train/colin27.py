"""A real MRI segmentation task from Debian's ``mricron-data`` package (Colin27 T1 + AAL atlas).

Install (Debian/Ubuntu, root): ``apt-get update && apt-get install -y mricron-data``; files land in
``/usr/share/mricron/templates/`` (override with ``MRICRON_TEMPLATES=/path``). Without root:
``apt-get download mricron-data && dpkg-deb -x mricron-data_*.deb DIR`` then
``MRICRON_TEMPLATES=DIR/usr/share/mricron/templates``.

Task (nnU-Net v2 raw, one channel "T1" = ``ch2.nii.gz``, the Colin27 T1 *with* skull):
0 background, 1 ``brain_other`` (brain mask outside AAL: mostly white matter), and AAL's 116 regions merged
into lobes: 2 frontal, 3 parietal, 4 temporal, 5 occipital, 6 limbic_deep (insula, cingulum, hippocampus,
amygdala, basal ganglia, thalamus), 7 cerebellum (incl. vermis). Brain mask = largest connected part of
``ch2bet > 0`` united with AAL, holes filled. Every AAL name must map to a lobe (an unknown name raises).

Split: Colin27 is one subject, so the two cases are its hemispheres, cut at the midline (x = 0 mm, voxel 90):
``colin27_L`` and ``colin27_R`` share no voxel; ``splits_final.json`` trains on one and validates on the
other (the hemispheres of one real brain differ, so this is a real generalisation test).

Brain extraction (``write_brain_dataset``): the same T1 with 0 background and 1 brain (the brain mask above),
as the two hemispheres with the same split, or as one whole-head case.

Public API: ``available() -> bool``, ``write_dataset(out_dir) -> out_dir`` (lobes),
``write_brain_dataset(out_dir, whole_head=False) -> out_dir`` (both raise ``Colin27Unavailable`` with the
install command when the package is missing), ``INSTALL_HINT``.
"""
from __future__ import annotations

import os

import numpy as np
from scipy import ndimage

from mednext_fast.atomic import write_json
from mednext_fast.train import dataset_io as dio

TEMPLATES = os.environ.get("MRICRON_TEMPLATES", "/usr/share/mricron/templates")
FILES = ("ch2.nii.gz", "ch2bet.nii.gz", "aal.nii.gz", "aal.nii.txt")
INSTALL_HINT = ("the Colin27 dataset needs Debian's mricron-data package: run `apt-get update && apt-get install -y "
                "mricron-data` (as root), or set MRICRON_TEMPLATES to a folder holding " + ", ".join(FILES))
LABELS = {"background": 0, "brain_other": 1, "frontal": 2, "parietal": 3, "temporal": 4, "occipital": 5,
          "limbic_deep": 6, "cerebellum": 7}
# AAL name prefix -> lobe (first match wins); names are like 'Frontal_Sup_Orb_L'
LOBES = [
    (("Precentral", "Frontal", "Rolandic_Oper", "Supp_Motor_Area", "Olfactory", "Rectus", "Paracentral_Lobule"),
     "frontal"),
    (("Postcentral", "Parietal", "SupraMarginal", "Angular", "Precuneus"), "parietal"),
    (("Heschl", "Temporal", "Fusiform"), "temporal"),
    (("Calcarine", "Cuneus", "Lingual", "Occipital"), "occipital"),
    (("Insula", "Cingulum", "Hippocampus", "ParaHippocampal", "Amygdala", "Caudate", "Putamen", "Pallidum",
      "Thalamus"), "limbic_deep"),
    (("Cerebelum", "Vermis"), "cerebellum"),
]
MIDLINE_VOXEL = 90  # world x = 0 for Colin27's affine (origin -90 mm, 1 mm voxels)


class Colin27Unavailable(FileNotFoundError):
    pass


def available(templates: str | None = None) -> bool:
    folder = templates or TEMPLATES
    return all(os.path.isfile(os.path.join(folder, f)) for f in FILES)


def aal_to_lobe(names_file: str) -> dict:
    """{AAL index: lobe label value} from ``aal.nii.txt`` (lines 'index name code')."""
    table = {}
    with open(names_file) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 2:
                continue
            index, name = int(parts[0]), parts[1]
            lobe = next((lb for prefixes, lb in LOBES if name.startswith(prefixes)), None)
            if lobe is None:
                raise ValueError(f"{names_file}: AAL region {index} {name!r} has no lobe assignment")
            table[index] = LABELS[lobe]
    return table


def build_label(templates: str | None = None):
    """(t1 uint8, label uint8, affine) on the Colin27 1 mm grid."""
    folder = templates or TEMPLATES
    if not available(folder):
        raise Colin27Unavailable(INSTALL_HINT + f" (looked in {folder})")
    t1, affine, _ = dio.read_volume(os.path.join(folder, "ch2.nii.gz"), dtype=np.uint8)
    bet, bet_aff, _ = dio.read_volume(os.path.join(folder, "ch2bet.nii.gz"), dtype=np.uint8)
    aal, aal_aff, _ = dio.read_volume(os.path.join(folder, "aal.nii.gz"), dtype=np.int32)
    for name, arr, aff in (("ch2bet", bet, bet_aff), ("aal", aal, aal_aff)):
        if arr.shape != t1.shape or not np.allclose(aff, affine, atol=1e-4):
            raise dio.DatasetError(f"{name}.nii.gz is not on the ch2.nii.gz grid ({arr.shape} vs {t1.shape})")
    parts, n = ndimage.label(bet > 0)
    largest = np.argmax(np.bincount(parts.ravel())[1:]) + 1 if n else 0
    brain = ndimage.binary_fill_holes((parts == largest) | (aal > 0))
    lut = np.zeros(int(aal.max()) + 1, np.uint8)
    table = aal_to_lobe(os.path.join(folder, "aal.nii.txt"))
    missing = sorted(set(np.unique(aal[aal > 0]).tolist()) - set(table))
    if missing:
        raise dio.DatasetError(f"aal.nii.gz has region index(es) {missing} not listed in aal.nii.txt")
    for idx, value in table.items():
        if idx < len(lut):
            lut[idx] = value
    label = np.where(brain, LABELS["brain_other"], 0).astype(np.uint8)
    label[aal > 0] = lut[aal[aal > 0]]
    return t1, label, affine


def _write_cases(out_dir: str, t1, label, affine, halves: dict) -> None:
    for case, sl in halves.items():
        aff = affine.copy()
        aff[:3, 3] = affine[:3, :3] @ np.array([sl.start, 0, 0]) + affine[:3, 3]  # keep world positions
        dio.write_volume(t1[sl], aff, os.path.join(out_dir, "imagesTr", f"{case}_0000.nii.gz"))
        dio.write_volume(label[sl], aff, os.path.join(out_dir, "labelsTr", f"{case}.nii.gz"))


def _hemispheres(n_x: int) -> dict:
    return {"colin27_L": slice(0, MIDLINE_VOXEL), "colin27_R": slice(MIDLINE_VOXEL, n_x)}


HEMISPHERE_SPLIT = [{"train": ["colin27_L"], "val": ["colin27_R"]}, {"train": ["colin27_R"], "val": ["colin27_L"]}]
LICENCE = "Debian mricron-data (BSD-3-clause per Debian copyright); cite AAL and Colin27"


def write_dataset(out_dir: str, templates: str | None = None) -> str:
    """Write the two-hemisphere Colin27 lobes task as a v2 raw dataset (plus splits_final.json); returns out_dir."""
    t1, label, affine = build_label(templates)
    _write_cases(out_dir, t1, label, affine, _hemispheres(t1.shape[0]))
    meta = dict(name="Colin27_lobes", description="Colin27 T1 (with skull) -> brain + AAL merged into lobes; "
                "cases are the two hemispheres (no shared voxel)", channel_names={"0": "T1"}, labels=dict(LABELS),
                numTraining=2, file_ending=".nii.gz", reference="Holmes 1998 (Colin27); Tzourio-Mazoyer 2002 (AAL)",
                licence=LICENCE, converted_by="mednext_fast.train.colin27")
    write_json(os.path.join(out_dir, "dataset.json"), meta)
    write_json(os.path.join(out_dir, "splits_final.json"), HEMISPHERE_SPLIT)
    return out_dir


def write_brain_dataset(out_dir: str, whole_head: bool = False, templates: str | None = None) -> str:
    """Brain extraction on Colin27 (0 background, 1 brain: the lobes task's brain mask) as a v2 raw dataset.

    Default: the two hemispheres as cases with the hemisphere split (train on one, validate on the other).
    ``whole_head``: one case, the whole head (a one-subject dataset: it trains fold 'all', and another subject,
    e.g. ``inia19.write_test_case``, is the held-out check)."""
    t1, label, affine = build_label(templates)
    brain = (label > 0).astype(np.uint8)
    cases = {"colin27": slice(0, t1.shape[0])} if whole_head else _hemispheres(t1.shape[0])
    _write_cases(out_dir, t1, brain, affine, cases)
    what = "the whole head, one case" if whole_head else "cases are the two hemispheres (no shared voxel)"
    meta = dict(name="Colin27_brain", description=f"Colin27 T1 (with skull) -> brain mask; {what}",
                channel_names={"0": "T1"}, labels={"background": 0, "brain": 1}, numTraining=len(cases),
                file_ending=".nii.gz", reference="Holmes 1998 (Colin27)", licence=LICENCE,
                converted_by="mednext_fast.train.colin27")
    write_json(os.path.join(out_dir, "dataset.json"), meta)
    if not whole_head:
        write_json(os.path.join(out_dir, "splits_final.json"), HEMISPHERE_SPLIT)
    return out_dir

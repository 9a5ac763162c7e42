"""Segmentation metrics per case and class: Dice (DSC), normalised surface Dice (NSD) and HD95.

Conventions (see shared/reference/nnunet-conventions-and-data.md section 3):

* DSC = 2TP / (2TP + FP + FN); NaN when reference and prediction are both empty (nnU-Net), averages
  over cases use nanmean.
* Boundary of a mask = its edge voxels, ``mask & ~erosion(mask)`` with the 6-connected cross (voxels on
  the image border count as edge), located at voxel centres; distances are Euclidean in mm (spacing-
  scaled exact EDT). This is MONAI's default (``use_subvoxels=False``) convention.
* NSD at tolerance tau (default 1 mm) = (#pred edge voxels within tau of the reference boundary +
  #reference edge voxels within tau of the prediction boundary) / (#pred + #reference edge voxels);
  every edge voxel weighs 1 (MONAI default). DeepMind's area-weighted surfels are not implemented.
* HD95 follows MONAI ``compute_hausdorff_distance(percentile=95, directed=False)``: for each direction
  the 95th percentile (linear interpolation) of the edge-voxel distances, then the **max** of the two
  directions (not the pooled MedPy percentile, not DeepMind's area-weighted rank).
* Empty masks: both empty -> DSC, NSD and HD95 are NaN; only one empty -> DSC 0, NSD 0, HD95 inf (undefined).
  Summaries never average an inf: see ``summarize`` (defined-case mean, count, and the worst case).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    pred, ref = pred.astype(bool), ref.astype(bool)
    tp = np.logical_and(pred, ref).sum()
    denom = pred.sum() + ref.sum()
    return float("nan") if denom == 0 else float(2 * tp / denom)


def edges(mask: np.ndarray) -> np.ndarray:
    mask = mask.astype(bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _crop_to_union(pred: np.ndarray, ref: np.ndarray):
    # The union's bounding box plus one voxel of zero padding: same edges, much smaller EDTs.
    union = pred | ref
    coords = np.argwhere(union)
    lo, hi = coords.min(0), coords.max(0) + 1
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    return np.pad(pred[sl], 1), np.pad(ref[sl], 1)


def _distances(src_edges: np.ndarray, dst_edges: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) from every edge voxel of ``src`` to the nearest edge voxel of ``dst``."""
    field = ndimage.distance_transform_edt(~dst_edges, sampling=spacing)
    return field[src_edges]


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing):
    """(pred->ref distances, ref->pred distances) over edge voxels; None for a side with an empty mask."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    if not pred.any() or not ref.any():
        return None
    pred, ref = _crop_to_union(pred, ref)
    ep, er = edges(pred), edges(ref)
    return _distances(ep, er, spacing), _distances(er, ep, spacing)


def nsd(pred: np.ndarray, ref: np.ndarray, spacing, tolerance_mm: float = 1.0) -> float:
    pred, ref = pred.astype(bool), ref.astype(bool)
    if not pred.any() and not ref.any():
        return float("nan")
    if not pred.any() or not ref.any():
        return 0.0
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    return float(((d_pr <= tolerance_mm).sum() + (d_rp <= tolerance_mm).sum()) / (d_pr.size + d_rp.size))


def hd95(pred: np.ndarray, ref: np.ndarray, spacing, percentile: float = 95.0) -> float:
    pred, ref = pred.astype(bool), ref.astype(bool)
    if not pred.any() and not ref.any():
        return float("nan")
    if not pred.any() or not ref.any():
        return float("inf")
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    return float(max(np.percentile(d_pr, percentile), np.percentile(d_rp, percentile)))


def worst_distance(shape, spacing) -> float:
    """The documented worst case of a distance metric for a volume: its diagonal in mm (the largest distance two
    voxels of it can have), used for a class whose prediction or reference is empty (as in the MSD and BraTS
    rankings)."""
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def case_metrics(pred: np.ndarray, ref: np.ndarray, labels, spacing, tolerance_mm: float = 1.0) -> dict:
    """{label: {'dice', 'nsd', 'hd95', 'hd95_worst_case', 'n_ref', 'n_pred'}} for each foreground ``label``;
    ``hd95_worst_case`` is HD95 with an undefined (inf) value replaced by ``worst_distance``."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from the reference shape {ref.shape}")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} entries for a {pred.ndim}-D volume")
    worst = worst_distance(pred.shape, spacing)
    out = {}
    for label in labels:
        p, r = pred == label, ref == label
        distance = hd95(p, r, spacing)
        out[int(label)] = dict(dice=dice(p, r), nsd=nsd(p, r, spacing, tolerance_mm), hd95=distance,
                               hd95_worst_case=worst if np.isinf(distance) else distance,
                               n_ref=int(r.sum()), n_pred=int(p.sum()))
    return out


def summarize(per_case: dict) -> dict:
    """Means over cases per label and metric, and over the labels ('foreground_mean').

    NaN values (both masks empty) are left out of every mean, as nnU-Net does. HD95 is undefined (inf) where
    one mask is empty: 'hd95' is the mean over the cases where it is defined, 'hd95_undefined' counts the
    others, and 'hd95_worst_case' is the mean with those cases at the volume diagonal. No mean is ever inf.
    """
    by_label: dict = {}
    for metrics in per_case.values():
        for label, values in metrics.items():
            for name in ("dice", "nsd", "hd95", "hd95_worst_case"):
                by_label.setdefault(str(label), {}).setdefault(name, []).append(values[name])
    mean = {}
    for label, names in by_label.items():
        mean[label] = {}
        for name, values in names.items():
            arr = np.asarray(values, dtype=float)
            kept = arr[np.isfinite(arr)]
            mean[label][name] = float(kept.mean()) if kept.size else float("nan")
        mean[label]["hd95_undefined"] = int(np.isinf(np.asarray(names["hd95"], dtype=float)).sum())
    names = ("dice", "nsd", "hd95", "hd95_worst_case")
    fg = {name: [m[name] for m in mean.values() if not np.isnan(m[name])] for name in names}
    mean["foreground_mean"] = {k: (float(np.mean(v)) if v else float("nan")) for k, v in fg.items()}
    mean["foreground_mean"]["hd95_undefined"] = sum(m["hd95_undefined"] for k, m in mean.items()
                                                    if k != "foreground_mean")
    return mean


def jsonable(per_case: dict) -> dict:
    """``per_case`` with undefined (inf) HD95 values as None, since JSON has no infinity."""
    return {case: {label: {k: (None if isinstance(v, float) and np.isinf(v) else v) for k, v in values.items()}
                   for label, values in metrics.items()} for case, metrics in per_case.items()}


def format_summary(fg: dict) -> str:
    """One line for the log: mean Dice, NSD and HD95, saying how many class-cases have no HD95."""
    text = f"mean Dice {fg['dice']:.4f} NSD@1mm {fg['nsd']:.4f} HD95 {fg['hd95']:.2f} mm"
    if fg["hd95_undefined"]:
        text += (f" over the defined cases ({fg['hd95_undefined']} class-case(s) with an empty prediction or "
                 f"reference have none; {fg['hd95_worst_case']:.2f} mm with those at the volume diagonal)")
    return text


def format_table(per_case: dict) -> str:
    """Plain-text table: one row per case and label ('undef': HD95 undefined, one mask empty)."""
    lines = [f"{'case':<24}{'label':>6}{'dice':>9}{'nsd@tol':>9}{'hd95_mm':>10}{'n_ref':>10}{'n_pred':>10}"]
    for case, metrics in sorted(per_case.items()):
        for label, v in sorted(metrics.items(), key=lambda kv: int(kv[0])):
            hd = "undef" if np.isinf(v["hd95"]) else f"{v['hd95']:.3f}"
            lines.append(f"{case:<24}{label:>6}{v['dice']:>9.4f}{v['nsd']:>9.4f}{hd:>10}"
                         f"{v['n_ref']:>10}{v['n_pred']:>10}")
    return "\n".join(lines) + "\n"

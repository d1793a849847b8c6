"""3D Dice of atlas grounding on subjects that did not provide the atlas (issue 23).

    mimo-assistant eval-anatomy --data ../shared/data/volumes --out anatomy/report.json

Pairs (atlas -> target, reference):

- brain MR: MNI152 + Neuromorphometrics -> Colin27 (AAL, drawn on Colin27 itself) and ->
  fsaverage's T1 with its skull (aseg); fsaverage + aseg -> Colin27 (AAL);
- body CT: the TotalSegmentator example CT (its labels are that model's output) -> the MSD
  spleen CT (manual spleen) and -> the dcmqi 3-slice CT (liver, heart).

Per structure (both sides together) in the same run: ``unregistered`` (the atlas's labels at
the same world coordinates, the floor), ``atlas`` (registered and carried over: what
``ask --3d`` returns) and ``litemedsam_prior_box`` (LiteMedSAM given, on every ``slice_step``-th
axial slice, the box of the carried-over mask + 3 px; scored with ``atlas`` on the same slices).
Label protocols differ between atlases (AAL's hippocampus is not Neuromorphometrics'), which
caps every method's Dice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..anatomy.atlases import Atlas, atlas_from_json, builtin_atlases, read_image, read_volume
from ..anatomy.grounding import AnatomyGrounder
from ..errors import MimoError

#: Structure (bilateral) -> label values in each reference.
AAL = {"thalamus": (77, 78), "caudate nucleus": (71, 72), "putamen": (73, 74), "hippocampus": (37, 38),
       "cerebellum": tuple(range(91, 117)), "globus pallidus": (75, 76), "amygdala": (41, 42)}
ASEG = {"thalamus": (10, 49), "caudate nucleus": (11, 50), "putamen": (12, 51), "hippocampus": (17, 53),
        "lateral ventricle": (4, 5, 43, 44), "brain stem": (16,), "cerebellum": (7, 8, 46, 47),
        "globus pallidus": (13, 52), "amygdala": (18, 54)}
#: The structures issue 23 names for brain MR (the mean and minimum are over these).
MAJOR_BRAIN = ("thalamus", "caudate nucleus", "putamen", "hippocampus", "lateral ventricle", "brain stem", "cerebellum")
TOTALSEG_CT = {"1": "spleen", "2": "kidney_right", "3": "kidney_left", "4": "gallbladder", "5": "liver", "6": "stomach",
               "7": "pancreas", "52": "aorta", "51": "heart"}


@dataclass
class Pair:
    name: str
    atlas: Atlas
    target: Path
    modality: str
    reference: Path
    structures: dict[str, tuple[int, ...]]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else 1.0


def anatomy_pairs(data: Path, workdir: Path) -> list[Pair]:
    atlases = builtin_atlases()
    pairs = []
    colin = data / "mricron_colin27_aal"
    mni, fsaverage = atlases.get("mni152-neuromorphometrics"), atlases.get("fsaverage-aseg")
    if colin.exists():
        for atlas in (mni, fsaverage):
            if atlas is not None:
                pairs.append(Pair(f"{atlas.name} -> colin27", atlas, colin / "ch2bet.nii.gz", "MR", colin / "aal.nii.gz", AAL))
    if mni is not None and fsaverage is not None:
        pairs.append(Pair("mni152-neuromorphometrics -> fsaverage (T1 with skull)", mni, fsaverage.template_path, "MR", fsaverage.labels_path, ASEG))
    totalseg = data / "totalseg_example"
    if totalseg.exists():
        description = {"name": "totalseg-example-ct", "modality": "CT", "description": "TotalSegmentator example CT",
                       "template": str(totalseg / "example_ct_sm.nii.gz"), "labels": str(totalseg / "example_seg.nii.gz"),
                       "structures": TOTALSEG_CT, "licence": "Apache-2.0 (labels: TotalSegmentator output)"}
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "totalseg-ct.json").write_text(json.dumps(description), encoding="utf-8")
        ct_atlas = atlas_from_json(workdir / "totalseg-ct.json")
        spleen = data / "ivadomed_spleen_spine"
        if spleen.exists():
            pairs.append(Pair("totalseg-example-ct -> msd spleen ct", ct_atlas, spleen / "sub-spleen2_ct.nii.gz", "CT",
                              spleen / "sub-spleen2_ct_seg-manual.nii.gz", {"spleen": (1,)}))
        dcmqi = data / "dcmqi_ct3slice"
        if dcmqi.exists():
            pairs.append(Pair("totalseg-example-ct -> dcmqi 3-slice ct", ct_atlas, dcmqi / "ct-3slice", "CT",
                              dcmqi / "liver_seg.nrrd", {"liver": (1,)}))
            pairs.append(Pair("totalseg-example-ct -> dcmqi 3-slice ct (heart)", ct_atlas, dcmqi / "ct-3slice", "CT",
                              dcmqi / "heart_seg.nrrd", {"heart": (3,)}))
    return pairs


def _reference_on(volume, path: Path) -> np.ndarray:
    """The reference labels on the volume's grid ([k, j, i]), by world coordinates."""
    import SimpleITK as sitk

    from ..image import to_sitk

    reference = read_image(path)
    grid = to_sitk(volume, np.zeros(volume.array.shape, np.uint8))
    return sitk.GetArrayFromImage(sitk.Resample(reference, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0))


def _unregistered(atlas: Atlas, volume, values: tuple[int, ...]) -> np.ndarray:
    import SimpleITK as sitk

    from ..image import to_sitk

    grid = to_sitk(volume, np.zeros(volume.array.shape, np.uint8))
    carried = sitk.GetArrayFromImage(sitk.Resample(atlas.labels(), grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    return np.isin(carried, values)


def _prior_box_masks(backend, volume, prior: np.ndarray, truth: np.ndarray, step: int, sessions: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """LiteMedSAM on every ``step``-th axial slice that holds the prior or the reference, given
    the box of the prior's slice + 3 px: (its 3D mask, the voxels of the slices scored, slice count)."""
    from ..assistant import slice_image
    from ..backend import Turn
    from ..geometry import axis_slice, extract_slice, paste_mask, slice_axis_index
    from ..prompts import BoxPrompt

    axis = slice_axis_index(volume.ijk_to_ras, "axial")
    count = tuple(reversed(volume.shape))[axis]
    result, scored, used = np.zeros(prior.shape, bool), np.zeros(prior.shape, bool), 0
    indices = [i for i in range(count) if extract_slice(prior | truth, axis_slice(volume.shape, volume.ijk_to_ras, "axial", i)).any()]
    for index in indices[::step]:
        geometry = axis_slice(volume.shape, volume.ijk_to_ras, "axial", index)
        scored |= paste_mask(np.ones(geometry.shape, bool), geometry, volume.shape)
        used += 1
        rows, cols = np.nonzero(extract_slice(prior, geometry))
        if rows.size == 0:
            continue
        if index not in sessions:
            sessions[index] = backend.open_session(slice_image(volume, geometry))
        height, width = geometry.shape
        box = BoxPrompt(max(0.0, cols.min() - 3.0), max(0.0, rows.min() - 3.0), min(width - 1.0, cols.max() + 3.0), min(height - 1.0, rows.max() + 3.0))
        answer = backend.ask(sessions[index], Turn("", [box]))
        if answer.masks:
            result |= paste_mask(np.logical_or.reduce(answer.masks), geometry, volume.shape)
    return result, scored, used


def evaluate_anatomy(data: Path, out: Path, slice_step: int = 4, with_litemedsam: bool = True, cache_dir: Path | None = None) -> dict:
    pairs = anatomy_pairs(Path(data), Path(out).parent / "atlases")
    if not pairs:
        raise MimoError(f"no atlas/target pair could be built from {data} and the installed atlas packages")
    backend = None
    if with_litemedsam:
        from ..backend import create_backend

        backend = create_backend("litemedsam", None, "cpu", max_sessions=512)  # one per slice of a pair, kept across its structures
    report = {"pairs": [], "slice_step": slice_step}
    for pair in pairs:
        volume = read_volume(pair.target, pair.modality)
        reference = _reference_on(volume, pair.reference)
        grounder = AnatomyGrounder(pair.atlas, cache_dir=cache_dir)
        start = time.perf_counter()
        question = "Segment the " + " and the ".join(pair.structures) + "."
        try:
            answer = grounder.ground(volume, question)
        except MimoError as error:  # a refusal is a result: recorded with its message
            report["pairs"].append({"pair": pair.name, "atlas": pair.atlas.name, "target": str(pair.target.name),
                                    "refused": str(error), "structures": list(pair.structures)})
            _write(report, out)
            continue
        first = time.perf_counter() - start
        start = time.perf_counter()
        grounder.ground(volume, f"Segment the {next(iter(pair.structures))}.")
        further = time.perf_counter() - start
        rows, sessions = [], {}
        for structure, values in pair.structures.items():
            truth = np.isin(reference, values)
            parts = [s for s in answer.segments if s.name == structure or s.name.endswith(" " + structure)]
            carried = np.logical_or.reduce([s.mask for s in parts]) if parts else np.zeros(truth.shape, bool)
            row = {"structure": structure, "reference_voxels": int(truth.sum()), "covered": structure in pair.atlas.names(),
                   "unregistered": round(_dice(_unregistered(pair.atlas, volume, pair.atlas.label_values(structure)), truth), 4)
                   if structure in pair.atlas.names() else None,
                   "atlas": round(_dice(carried, truth), 4) if parts else None,
                   "answer": "outlined" if parts else ("not in view" if structure in answer.outside else "not covered")}
            if backend is not None and parts and truth.any():
                boxed, scored, used = _prior_box_masks(backend, volume, carried, truth, slice_step, sessions)
                row["slices_scored"] = used
                row["atlas_on_those_slices"] = round(_dice(carried & scored, truth & scored), 4)
                row["litemedsam_prior_box"] = round(_dice(boxed & scored, truth & scored), 4)
            rows.append(row)
        for session in sessions.values():
            backend.close_session(session)
        scored = [r for r in rows if r["atlas"] is not None]
        major = [r["atlas"] for r in scored if r["structure"] in MAJOR_BRAIN]
        report["pairs"].append({
            "pair": pair.name, "atlas": pair.atlas.name, "target": str(pair.target.name), "similarity": answer.similarity,
            "first_answer_s": round(first, 2), "further_structure_s": round(further, 2), "voxels": int(np.prod(volume.array.shape)),
            "structures": rows, "major_mean": round(float(np.mean(major)), 4) if major else None, "major_min": min(major) if major else None,
        })
        _write(report, out)  # after every pair: a long run that stops keeps what it measured
    return report


def _write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    out.with_suffix(".md").write_text(render(report), encoding="utf-8")


def render(report: dict) -> str:
    lines = ["# Atlas grounding, 3D Dice per structure (both sides together)", "",
             f"LiteMedSAM with the prior's box and the atlas on the same slices: every {report['slice_step']}th axial slice.", ""]
    for pair in report["pairs"]:
        if "refused" in pair:
            lines += [f"## {pair['pair']}", "", f"Refused ({', '.join(pair['structures'])}): {pair['refused']}", ""]
            continue
        lines += [f"## {pair['pair']}", "",
                  f"similarity {pair['similarity']:.2f} · first answer {pair['first_answer_s']} s (registration included) · "
                  f"a further structure {pair['further_structure_s']} s · {pair['voxels']:,} voxels"
                  + (f" · major structures mean {pair['major_mean']:.3f}, min {pair['major_min']:.3f}" if pair["major_mean"] is not None else ""), "",
                  "| structure | answer | unregistered | atlas (registered) | atlas, sampled slices | LiteMedSAM + prior's box, same slices |",
                  "|---|---|---|---|---|---|"]
        for row in pair["structures"]:
            cells = [row["structure"], row["answer"]] + ["–" if row.get(key) is None else f"{row[key]:.3f}" for key in
                                                         ("unregistered", "atlas", "atlas_on_those_slices", "litemedsam_prior_box")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)

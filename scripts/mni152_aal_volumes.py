"""Write a labelled-volume dataset the shipped MIMO-Tiny never saw: the ICBM 2009a MNI152 T1
template that nilearn ships, with the AAL atlas carried onto it by world coordinates.

MIMO-Tiny learnt AAL regions on the Colin27 brain (one subject, ``../shared/data/volumes/
mricron_colin27_aal``); MNI152 is another image (an average of 152 brains, other contrast and
sharpness) in the same MNI space. It is the multi-structure MR source we can hold out from that
model, so query specificity (does the mask follow the region asked for?) is measured there on
unseen slices. The reference masks are the atlas carried over by coordinates
(:mod:`mimo.data.atlas`), not a delineation on this image: Dice against them stays below 1, and
the comparison that matters is the right region's Dice beside another region's.

Needs nilearn, which is not a dependency of the project (``pip install nilearn``)::

    python scripts/mni152_aal_volumes.py --aal ../shared/data/volumes/mricron_colin27_aal --out mni152-aal
    mimo-assistant data build --volumes mni152-aal --out mni152-build
    mimo-assistant eval --model MIMOAssistant/mimo/resources/mimo-tiny --data mni152-build --split all \
        --perspectives text_seg --max-per-dataset 24 --out mni152-report/report.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MIMOAssistant"))

from mimo.data.atlas import AtlasError, write_atlas_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aal", required=True, type=Path, help="folder with aal.nii.gz and aal.nii.txt (mricron-data)")
    parser.add_argument("--out", required=True, type=Path, help="new folder for the dataset (must not exist)")
    args = parser.parse_args(argv)
    try:
        import nibabel
        from nilearn import datasets
    except ImportError:
        print("error: this script needs nilearn (pip install nilearn)", file=sys.stderr)
        return 2
    template = datasets.load_mni152_template(resolution=1)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata()) > 0
    # Colin27 in the training data is brain-extracted (ch2bet); so is the template here.
    t1 = np.where(brain, template.get_fdata(), 0).astype(np.float32)
    with tempfile.TemporaryDirectory() as work:
        t1_path = Path(work) / "mni152_t1_brain.nii.gz"
        nibabel.save(nibabel.Nifti1Image(t1, template.affine), str(t1_path))
        try:
            path = write_atlas_dataset(
                t1_path, args.aal / "aal.nii.gz", args.aal / "aal.nii.txt", args.out, "mni152_aal", "MR",
                license="ICBM 2009a template (McConnell Brain Imaging Centre, free use with attribution) as shipped by "
                        "nilearn; AAL atlas from mricron-data (third-party, research use)",
                source="nilearn.datasets.load_mni152_template(resolution=1) x brain mask; AAL carried by world coordinates",
                inside=np.transpose(brain, (2, 1, 0)),  # nibabel (x, y, z) -> SimpleITK (z, y, x)
            )
        except AtlasError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

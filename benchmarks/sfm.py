"""Wall time per stage of ``descbal reconstruct`` against pycolmap's own SIFT pipeline, same run.

Case: a Strecha scene (default ``../shared/data/sfm/fountain-P11``, 11 images 3072x2048) at
``--max-size`` (default 1600) on the longer side, one self-calibrated ``SIMPLE_RADIAL`` camera
for all images, exhaustive pairs, ``--max-keypoints`` (default 8192, pycolmap's SIFT default):

* **descbal sift** and **descbal MODEL** (``--model``, default the published TFeat liberty
  weights): :func:`descbal.sfm.reconstruct` (extract on the shrunk images, keypoints mapped back
  to full resolution; mutual NN + ratio 0.8; database + pycolmap's two-view verification;
  pycolmap's incremental mapping);
* **pycolmap sift**: ``pycolmap.extract_features`` (``max_image_size`` = ``--max-size``),
  ``pycolmap.match_exhaustive`` (its SIFT matcher and verification), ``incremental_mapping``.

Printed: seconds per stage, the ratio of descbal's stages before mapping (extract + pairs +
match + database with verification) to pycolmap's extraction + matching (target <= 1), and each
reconstruction's numbers against the ground truth (registered, points, track length,
reprojection error, camera-centre error after the robust similarity alignment, rotation error,
relative-pose AUC@5; target for descbal sift: within 5 % of pycolmap's registered images and
centre error).

Usage: ``python benchmarks/sfm.py [--scene DIR] [--max-size 1600] [--model PATH] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from descbal.extract.pipeline import ExtractConfig
from descbal.sfm import CameraOptions, ReconstructConfig, evaluate_reconstruction, load_ground_truth, load_model, reconstruct
from descbal.sfm.colmap_db import colmap_log, import_pycolmap

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pycolmap_sift(images: Path, out: Path, max_size: int, max_keypoints: int) -> tuple[dict[str, float], object]:
    """pycolmap's own pipeline; seconds per stage and the largest model (None when none)."""
    pycolmap = import_pycolmap()
    out.mkdir(parents=True, exist_ok=True)
    db = out / "database.db"
    db.unlink(missing_ok=True)
    names = sorted(p.name for p in images.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    secs: dict[str, float] = {}
    ext = pycolmap.FeatureExtractionOptions()
    ext.max_image_size = max_size
    ext.sift.max_num_features = max_keypoints
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_RADIAL"
    t = time.perf_counter()
    pycolmap.extract_features(db, images, names, camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                              extraction_options=ext)
    secs["extract"] = time.perf_counter() - t
    t = time.perf_counter()
    pycolmap.match_exhaustive(db)
    secs["match"] = time.perf_counter() - t
    t = time.perf_counter()
    recs = pycolmap.incremental_mapping(db, images, out / "sparse")
    secs["mapping"] = time.perf_counter() - t
    best = max(recs.values(), key=lambda r: r.num_reg_images()) if recs else None
    return secs, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene", type=Path, default=DATA / "sfm" / "fountain-P11")
    ap.add_argument("--max-size", type=int, default=1600)
    ap.add_argument("--max-keypoints", type=int, default=8192)
    ap.add_argument("--model", default=str(DATA / "weights" / "tfeat" / "tfeat-liberty.params"))
    ap.add_argument("--out", type=Path, default=None, help="keep the reconstructions here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    gt = load_ground_truth(args.scene)
    with tempfile.TemporaryDirectory(prefix="descbal-sfm-bench-") as tmp:
        root = args.out or Path(tmp)
        rows = []
        for label, spec in (("descbal sift", "sift"), (f"descbal {Path(args.model).stem}", args.model)):
            cfg = ReconstructConfig(extract=ExtractConfig(model=spec, max_keypoints=args.max_keypoints, device="cpu",
                                                          max_size=args.max_size),
                                    camera=CameraOptions(single_camera=True))
            res = reconstruct(gt.images_dir, root / label.replace(" ", "-"), cfg, overwrite=True)
            rec = load_model(res.model) if res.model else None
            m, _ = evaluate_reconstruction(rec, gt, label)
            before = sum(v for k, v in res.seconds.items() if k != "mapping")
            rows.append((label, res.seconds, before, m))
        with colmap_log(False):
            secs, rec = pycolmap_sift(gt.images_dir, root / "pycolmap-sift", args.max_size, args.max_keypoints)
        m, _ = evaluate_reconstruction(rec, gt, "pycolmap sift")
        rows.append(("pycolmap sift", secs, secs["extract"] + secs["match"], m))

    ref_before, ref_m = rows[-1][2], rows[-1][3]
    print(f"scene {gt.scene} ({len(gt.names)} images) at --max-size {args.max_size}, max {args.max_keypoints} keypoints, "
          "one self-calibrated SIMPLE_RADIAL camera, exhaustive pairs")
    print(f"{'pipeline':<24}{'extract':>9}{'pairs':>7}{'match':>8}{'db+verify':>10}{'mapping':>9}{'pre-map':>9}"
          f"{'ratio':>7}{'reg':>7}{'points':>8}{'track':>7}{'reproj':>8}{'C mean m':>10}{'C med m':>9}{'R med':>7}"
          f"{'AUC@5':>7}")
    doc = []
    for label, s, before, m in rows:
        print(f"{label:<24}{s.get('extract', 0):9.1f}{s.get('pairs', 0):7.2f}{s.get('match', 0):8.1f}"
              f"{s.get('database', 0):10.1f}{s.get('mapping', 0):9.1f}{before:9.1f}{before / ref_before:7.2f}"
              f"{m.registered:>4}/{m.images:<2}{m.points3d:8d}{m.mean_track_length:7.2f}{m.mean_reprojection_error:8.2f}"
              f"{(m.centre_error_mean or float('nan')):10.4f}{(m.centre_error_median or float('nan')):9.4f}"
              f"{(m.rotation_error_median or float('nan')):7.2f}{m.pose_auc['5']:7.3f}")
        doc.append({"pipeline": label, "seconds": s, "before_mapping": before, "ratio": before / ref_before,
                    "metrics": {k: v for k, v in m.to_json().items() if k != "aligned_centres"}})
    sift_m = rows[0][3]
    if ref_m.registered and ref_m.centre_error_mean and sift_m.centre_error_mean:
        print(f"descbal sift vs pycolmap sift: registered {sift_m.registered}/{ref_m.registered}, centre error "
              f"{sift_m.centre_error_mean / ref_m.centre_error_mean:.2f}x; stages before mapping "
              f"{rows[0][2] / ref_before:.2f}x (target <= 1)")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Images -> COLMAP model with descbal features: extract -> pairs -> match -> database -> mapping.

Every stage writes into ``OUT/`` and a finished stage is not redone (extraction and matching
skip images and pairs already in their files, the database and the model are written
atomically and kept when present); ``overwrite`` starts afresh. ``OUT/config.json`` holds the
resolved options: resuming with different ones is refused. Layout::

    OUT/features.h5     hloc features (keypoints in full-resolution pixels, also with max_size)
    OUT/pairs.txt       the image pairs matched
    OUT/matches.h5      hloc matches
    OUT/database.db     COLMAP database (descbal.sfm.colmap_db: +0.5 px, names checked)
    OUT/model/          the largest reconstruction, COLMAP binary (cameras/images/points3D.bin)
    OUT/summary.json    ReconstructResult.to_json()

Pairs: ``pairs`` (a file of ``name0 name1`` lines, checked against the images first), else
every pair when there are at most ``exhaustive_max`` images, else each image with its
``num_neighbours`` nearest by a global descriptor: the mean of the image's L2-normalised local
descriptors, L2-normalised, compared by cosine (a simple retrieval, enough for a few hundred
images of one place; for more, give pairs from a dedicated retrieval such as hloc's NetVLAD).
Triangulation, bundle adjustment and registration are pycolmap's ``incremental_mapping``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from descbal.errors import BadInputError, list_names
from descbal.extract.pipeline import ExtractConfig, FeatureExtractor, extract_folder
from descbal.fileio import write_text_atomic
from descbal.images import list_images
from descbal.match import match_features, read_pairs
from descbal.progress import Progress, or_no_progress
from descbal.results import JsonResult
from descbal.sfm.colmap_db import CameraOptions, colmap_log, import_pycolmap, write_colmap_database

STAGES = ("extract", "pairs", "match", "database", "mapping")
FEATURES, PAIRS, MATCHES, DATABASE, MODEL, SUMMARY, CONFIG = (
    "features.h5", "pairs.txt", "matches.h5", "database.db", "model", "summary.json", "config.json")


@dataclass(frozen=True)
class ReconstructConfig:
    """Options of :func:`reconstruct`; the CLI's defaults are these."""

    extract: ExtractConfig = field(default_factory=lambda: ExtractConfig(max_keypoints=4096))
    pairs: str | None = None  # a pairs file; None: exhaustive or retrieval
    exhaustive_max: int = 50  # all pairs up to this many images
    num_neighbours: int = 20  # retrieval: pairs per image beyond exhaustive_max
    ratio: float | None = 0.8  # Lowe's ratio on top of mutual nearest neighbours (None: mutual only)
    camera: CameraOptions = field(default_factory=CameraOptions)
    verify: bool = True  # two-view geometric verification before mapping (the mapper needs it)

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


@dataclass
class ReconstructResult(JsonResult):
    """What :func:`reconstruct` did (``OUT/summary.json``): images found and registered in the
    largest model, its 3D points, mean track length and mean reprojection error (px), pairs
    matched and how they were chosen, keypoints, inlier pairs, seconds per stage (0 for a stage
    already done: listed in ``resumed``), the resolved options (``extract.geometry``: the geometry
    used), and where that geometry came from (``geometry_source``: option, model or default)."""

    images_dir: str
    out: str
    model: str | None
    images: int
    registered: int
    points3d: int
    mean_track_length: float
    mean_reprojection_error: float
    pairs: int
    pairing: str
    keypoints: int
    verified_pairs: int
    seconds: dict[str, float]
    resumed: list[str]
    options: dict[str, Any]
    geometry_source: str = "default"


def make_pairs(features: str | Path, names: list[str], exhaustive_max: int = 50,
               num_neighbours: int = 20) -> tuple[list[tuple[str, str]], str]:
    """Image pairs to match and how they were chosen: ``"exhaustive"`` (every pair, names in
    order) up to ``exhaustive_max`` images, else ``"retrieval"`` (see the module docstring)."""
    if len(names) <= exhaustive_max:
        return list(itertools.combinations(names, 2)), "exhaustive"
    with h5py.File(features, "r", locking=False) as h5:
        glob = []
        for n in names:
            d = np.asarray(h5[n]["descriptors"][...], np.float64).T  # (N, D)
            d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
            g = d.mean(axis=0)
            glob.append(g / max(np.linalg.norm(g), 1e-12))
    sim = np.stack(glob) @ np.stack(glob).T
    np.fill_diagonal(sim, -np.inf)
    k = min(num_neighbours, len(names) - 1)
    chosen: set[tuple[int, int]] = set()
    for i in range(len(names)):
        for j in np.argsort(-sim[i], kind="stable")[:k]:
            chosen.add((min(i, int(j)), max(i, int(j))))
    return [(names[i], names[j]) for i, j in sorted(chosen)], "retrieval"


def _check_pairs(pairs: list[tuple[str, str]], names: list[str], path: str) -> None:
    have = set(names)
    unknown = [n for n in dict.fromkeys(n for p in pairs for n in p) if n not in have]
    if unknown:
        raise BadInputError(f"{len(unknown)} name(s) of the pairs file are not images of the folder (names are POSIX "
                            f"paths relative to it, e.g. {names[:1]}):{list_names(unknown)}", path)


def load_model(path: str | Path) -> Any:
    """A COLMAP model folder as a ``pycolmap.Reconstruction``."""
    pycolmap = import_pycolmap()
    rec = pycolmap.Reconstruction()
    rec.read(Path(path))
    return rec


def _map(database: Path, images_dir: Path, model_dir: Path) -> None:
    """pycolmap's incremental mapping; the model with the most registered images goes to ``model_dir``."""
    pycolmap = import_pycolmap()
    with tempfile.TemporaryDirectory(prefix=".mapping-", dir=model_dir.parent) as tmp:
        recs = pycolmap.incremental_mapping(database, images_dir, Path(tmp) / "sparse",
                                            pycolmap.IncrementalPipelineOptions())
        if not recs:
            return
        best = max(recs.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
        staged = Path(tmp) / MODEL
        staged.mkdir()
        best.write_binary(staged)
        staged.rename(model_dir)


def reconstruct(images_dir: str | Path, out: str | Path, cfg: ReconstructConfig = ReconstructConfig(), *,
                overwrite: bool = False, progress: Progress | None = None, verbose: bool = False) -> ReconstructResult:
    """Reconstruct the images under ``images_dir`` into ``out`` (see the module docstring).

    Args:
        cfg: extraction (model, detector, ``max_size``, geometry: by default the model's trained
            one...), pairing, matching and camera options.
        overwrite: delete what ``out`` holds of an earlier run and start afresh.
        progress: per stage: ``images`` (extraction), ``pairs`` (matching), ``database``,
            ``verify``, ``mapping``.
        verbose: COLMAP's own info log lines on stderr.

    Returns:
        A :class:`ReconstructResult` (also written to ``out/summary.json``); ``model`` is None
        and ``registered`` 0 when pycolmap could not initialise any model.

    Raises:
        BadInputError: a pairs file naming images not in the folder (all listed), ``out``
            holding a run with other options, or any input error of the stages.
        DataMissingError: no images.
    """
    from descbal.errors import DataMissingError

    pycolmap = import_pycolmap()
    images_dir, out = Path(images_dir), Path(out)
    progress = or_no_progress(progress)
    names = [p.relative_to(images_dir).as_posix() for p in list_images(images_dir)]
    if not names:
        raise DataMissingError("no image files (jpg, png, ppm, ...) found", images_dir)
    given_pairs = read_pairs(cfg.pairs) if cfg.pairs is not None else None
    if given_pairs is not None:
        _check_pairs(given_pairs, names, str(cfg.pairs))
    extractor = FeatureExtractor.from_config(cfg.extract)  # the model, and the geometry it was trained with
    options = cfg.to_json()
    # the geometry used, as resolved for this model (also what runs stored before models recorded one)
    options["extract"]["geometry"] = dataclasses.asdict(extractor.geometry)
    cfg_file = out / CONFIG
    if overwrite and out.is_dir():
        for name in (FEATURES, PAIRS, MATCHES, DATABASE, SUMMARY, CONFIG):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / MODEL, ignore_errors=True)
    elif cfg_file.is_file():
        old = json.loads(cfg_file.read_text(encoding="utf-8"))
        if old != options:
            changed = sorted(k for k in set(old) | set(options) if old.get(k) != options.get(k))
            raise BadInputError(f"holds a reconstruction with other options ({', '.join(changed)}); use --overwrite or "
                                "another --out", out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cfg_file, json.dumps(options, indent=2, sort_keys=True) + "\n")

    seconds: dict[str, float] = {}
    resumed: list[str] = []
    t = time.perf_counter()
    ext = extract_folder(images_dir, out / FEATURES, cfg.extract, progress=progress, extractor=extractor)
    seconds["extract"] = time.perf_counter() - t
    if ext.failed:
        raise BadInputError(f"{len(ext.failed)} image(s) gave no features:"
                            f"{list_names([f['name'] + ': ' + f['reason'] for f in ext.failed])}", images_dir)
    if ext.extracted == 0:
        resumed.append("extract")

    t = time.perf_counter()
    if given_pairs is not None:
        pair_list, pairing = given_pairs, "file"
    else:
        pair_list, pairing = make_pairs(out / FEATURES, names, cfg.exhaustive_max, cfg.num_neighbours)
    write_text_atomic(out / PAIRS, "".join(f"{a} {b}\n" for a, b in pair_list))
    seconds["pairs"] = time.perf_counter() - t

    t = time.perf_counter()
    mres = match_features(out / FEATURES, pair_list, out / MATCHES, ratio=cfg.ratio, device=cfg.extract.device,
                          progress=progress)
    seconds["match"] = time.perf_counter() - t
    if mres.matched == 0:
        resumed.append("match")

    t = time.perf_counter()
    verified = 0
    if (out / DATABASE).is_file() and (out / MODEL).is_dir():
        resumed.append("database")
    else:
        dres = write_colmap_database(out / FEATURES, out / MATCHES, images_dir, out / DATABASE, camera=cfg.camera,
                                     overwrite=True, verify=cfg.verify, progress=progress, verbose=verbose)
        verified = dres.verified_pairs
        shutil.rmtree(out / MODEL, ignore_errors=True)  # a new database makes any old model stale
    seconds["database"] = time.perf_counter() - t

    t = time.perf_counter()
    if (out / MODEL).is_dir():
        resumed.append("mapping")
    else:
        progress("mapping", 0, 1)
        with colmap_log(verbose):
            _map(out / DATABASE, images_dir, out / MODEL)
        progress("mapping", 1, 1)
    seconds["mapping"] = time.perf_counter() - t
    if verified == 0 and (out / DATABASE).is_file():
        with pycolmap.Database.open(out / DATABASE) as db:
            verified = sum(1 for c in db.read_two_view_geometry_num_inliers()[1] if c > 0)

    rec = load_model(out / MODEL) if (out / MODEL).is_dir() else None
    result = ReconstructResult(
        images_dir=str(images_dir), out=str(out), model=str(out / MODEL) if rec is not None else None, images=len(names),
        registered=rec.num_reg_images() if rec is not None else 0, points3d=rec.num_points3D() if rec is not None else 0,
        mean_track_length=float(rec.compute_mean_track_length()) if rec is not None else 0.0,
        mean_reprojection_error=float(rec.compute_mean_reprojection_error()) if rec is not None else 0.0,
        pairs=len(pair_list), pairing=pairing, keypoints=_num_keypoints(out / FEATURES), verified_pairs=verified,
        seconds=seconds, resumed=resumed, options=options, geometry_source=extractor.geometry_source)
    write_text_atomic(out / SUMMARY, json.dumps(result.to_json(), indent=2) + "\n")
    return result


def _num_keypoints(features: Path) -> int:
    from descbal.extract.writers import h5_feature_names

    with h5py.File(features, "r", locking=False) as h5:
        return int(sum(h5[n]["keypoints"].shape[0] for n in h5_feature_names(h5) if "keypoints" in h5[n]))

"""hloc features + matches files into a COLMAP database, through pycolmap.

What goes in, and the conventions that hloc users most often get wrong:

* **Pixel origin.** descbal/hloc keypoints have pixel centres at integers (the centre of the
  top-left pixel is (0, 0)); COLMAP's image origin is the top-left *corner* of that pixel, so
  its centre is (0.5, 0.5). A keypoint at (x, y) is stored at (x + 0.5, y + 0.5)
  (:data:`COLMAP_PIXEL_SHIFT`). Intrinsics given with ``intrinsics`` are read in the same
  convention as the keypoints (OpenCV's, and the Strecha scenes' ``K.txt``): their principal
  point is shifted by the same 0.5.
* **Names.** Images are the POSIX paths relative to the image folder, exactly as the features
  file stores them; every name of the features file, of the matches file and of the folder is
  checked first, and every missing one is listed in one error before anything is written.
* **Cameras.** ``pycolmap.import_images`` creates the cameras, rigs and frames as COLMAP's own
  importer does (intrinsics from EXIF where present, else a focal length of 1.2 x the longer
  side), one camera per image or one for all (``single_camera``); ``intrinsics`` then replaces
  the parameters: a file holding one 3x3 K for every image, or a folder with
  ``<image name>.txt`` (or ``.camera``, the Strecha layout) per image whose first three lines
  are its K.
* **Matches.** hloc's ``matches0`` (index into image 1's keypoints, -1 when unmatched) become
  COLMAP's (M, 2) index pairs; then pycolmap's two-view geometric verification
  (``pycolmap.verify_matches``) writes the inlier matches the mapper uses.

The database is built in a temporary file beside ``database`` and renamed into place; an
existing database is never touched unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.typing import NDArray

from descbal.errors import BadInputError, DataMissingError, list_names
from descbal.fileio import atomic_path
from descbal.images import list_images
from descbal.match import names_to_pair
from descbal.progress import Progress, or_no_progress
from descbal.results import JsonResult

#: Added to descbal/hloc keypoint coordinates (and principal points) for COLMAP (see the module docstring).
COLMAP_PIXEL_SHIFT = 0.5


def import_pycolmap() -> Any:
    """The ``pycolmap`` module, or a one-line BadInputError saying how to install it."""
    try:
        import pycolmap
    except ImportError:
        raise BadInputError("structure from motion needs pycolmap: pip install 'descbal[sfm]'") from None
    return pycolmap


@contextlib.contextmanager
def colmap_log(verbose: bool = False) -> Iterator[None]:
    """COLMAP's own log lines (stderr) only for warnings and errors unless ``verbose``."""
    pycolmap = import_pycolmap()
    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 0 if verbose else 1
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def to_colmap_keypoints(xy: NDArray[np.floating]) -> NDArray[np.float32]:
    """descbal/hloc keypoints (pixel centres at integers) in COLMAP's convention (pixel corners
    at integers). Shape: (N, 2) -> (N, 2) float32."""
    return (np.asarray(xy, np.float64).reshape(-1, 2) + COLMAP_PIXEL_SHIFT).astype(np.float32)


# ------------------------------------------------------------------------------ cameras

#: COLMAP camera model -> its parameters from a 3x3 K in COLMAP's pixel convention
#: (distortion terms start at 0; bundle adjustment refines them).
CAMERA_PARAMS: dict[str, Callable[[NDArray[np.float64]], list[float]]] = {
    "SIMPLE_PINHOLE": lambda K: [(K[0, 0] + K[1, 1]) / 2, K[0, 2], K[1, 2]],
    "PINHOLE": lambda K: [K[0, 0], K[1, 1], K[0, 2], K[1, 2]],
    "SIMPLE_RADIAL": lambda K: [(K[0, 0] + K[1, 1]) / 2, K[0, 2], K[1, 2], 0.0],
    "RADIAL": lambda K: [(K[0, 0] + K[1, 1]) / 2, K[0, 2], K[1, 2], 0.0, 0.0],
    "OPENCV": lambda K: [K[0, 0], K[1, 1], K[0, 2], K[1, 2], 0.0, 0.0, 0.0, 0.0],
}


@dataclass(frozen=True)
class CameraOptions:
    """How images get cameras (see the module docstring)."""

    model: str = "SIMPLE_RADIAL"  # a name of CAMERA_PARAMS
    intrinsics: str | None = None  # a K file for all images, or a folder of <name>.txt / <name>.camera
    single_camera: bool = False  # one camera shared by every image


def read_intrinsics(path: str | Path) -> NDArray[np.float64]:
    """A 3x3 K from the first three lines of a text file (three numbers each), in the pixel
    convention of the keypoints (centres at integers).

    Raises:
        DataMissingError: no such file.
        BadInputError: not three rows of three numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise DataMissingError("intrinsics file not found", path)
    rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:3]
    try:
        K = np.array([[float(v) for v in r] for r in rows], np.float64)
    except ValueError:
        K = np.zeros(0)
    if K.shape != (3, 3):
        raise BadInputError("expected a 3x3 intrinsics matrix K on the first three lines", path)
    return K


def colmap_camera_params(model: str, K: NDArray[np.float64]) -> list[float]:
    """COLMAP parameters of ``model`` for a K in the keypoints' convention (principal point
    shifted by :data:`COLMAP_PIXEL_SHIFT`).

    Raises:
        BadInputError: an unknown camera model (the message lists the known ones).
    """
    if model not in CAMERA_PARAMS:
        raise BadInputError(f"unknown camera model {model!r}; choose from {', '.join(CAMERA_PARAMS)}")
    K = np.array(K, np.float64)
    K[0, 2] += COLMAP_PIXEL_SHIFT
    K[1, 2] += COLMAP_PIXEL_SHIFT
    return [float(v) for v in CAMERA_PARAMS[model](K)]


def _intrinsics_for(names: list[str], intrinsics: str | None) -> dict[str, NDArray[np.float64]]:
    """K per image name from ``intrinsics`` (empty when None); every missing file listed at once."""
    if intrinsics is None:
        return {}
    src = Path(intrinsics)
    if src.is_file():
        K = read_intrinsics(src)
        return {n: K for n in names}
    if not src.is_dir():
        raise DataMissingError("intrinsics file or folder not found", src)
    found: dict[str, Path] = {}
    for n in names:
        for suffix in (".txt", ".camera"):
            if (src / (n + suffix)).is_file():
                found[n] = src / (n + suffix)
                break
    missing = [n for n in names if n not in found]
    if missing:
        raise BadInputError(f"no <name>.txt or <name>.camera intrinsics for {len(missing)} image(s):"
                            f"{list_names(missing)}", src)
    return {n: read_intrinsics(p) for n, p in found.items()}


# ------------------------------------------------------------------------------ names


def _feature_names(features: Path) -> list[str]:
    from descbal.extract.writers import h5_feature_names

    if not features.is_file():
        raise DataMissingError("features file not found", features)
    try:
        with h5py.File(features, "r", locking=False) as h5:
            return [n for n in h5_feature_names(h5) if "keypoints" in h5[n]]
    except OSError as e:
        raise BadInputError(f"not a readable HDF5 file ({e})", features) from None


def read_match_pairs(matches: str | Path, names: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """The image pairs of an hloc matches file, as names, and the pair keys that name images
    not in ``names``.

    hloc stores a pair as group ``names_to_pair(name0, name1)`` (``/`` in names becomes ``-``),
    so each key is mapped back through ``names``.

    Raises:
        DataMissingError: no such file.
        BadInputError: unreadable, or two names that hloc's key cannot tell apart.
    """
    matches = Path(matches)
    if not matches.is_file():
        raise DataMissingError("matches file not found", matches)
    by_key: dict[str, str] = {}
    for n in names:
        key = n.replace("/", "-")
        if by_key.setdefault(key, n) != n:
            raise BadInputError(f"image names {by_key[key]!r} and {n!r} have the same hloc pair key {key!r}", matches)
    pairs: list[tuple[str, str]] = []
    unknown: list[str] = []
    try:
        with h5py.File(matches, "r", locking=False) as h5:
            for k0, g0 in h5.items():
                if not isinstance(g0, h5py.Group):
                    continue
                for k1, g1 in g0.items():
                    if not isinstance(g1, h5py.Group) or "matches0" not in g1:
                        continue
                    for k in (k0, k1):
                        if k not in by_key and k not in unknown:
                            unknown.append(k)
                    if k0 in by_key and k1 in by_key:
                        pairs.append((by_key[k0], by_key[k1]))
    except OSError as e:
        raise BadInputError(f"not a readable HDF5 file ({e})", matches) from None
    return pairs, unknown


def check_names(features: Path, feature_names: list[str], images_dir: Path, image_names: list[str],
                matches: Path | None = None, unknown_in_matches: Sequence[str] = (),
                pairs: Sequence[tuple[str, str]] = ()) -> None:
    """Every name must be everywhere it is needed: the features' names in the image folder, the
    matches' and pairs' names in the features file. One BadInputError lists every missing name.
    """
    have_feat, have_img = set(feature_names), set(image_names)
    problems = []
    no_image = [n for n in feature_names if n not in have_img]
    if no_image:
        problems.append(f"{len(no_image)} name(s) of {features} are not images under {images_dir}:{list_names(no_image)}")
    if unknown_in_matches:
        problems.append(f"{len(unknown_in_matches)} image key(s) of {matches} are not in {features}:"
                        f"{list_names(list(unknown_in_matches))}")
    in_pairs = list(dict.fromkeys(n for p in pairs for n in p))
    no_feat = [n for n in in_pairs if n not in have_feat]
    if no_feat:
        problems.append(f"{len(no_feat)} name(s) of the pairs are not in {features}:{list_names(no_feat)}")
    if problems:
        raise BadInputError("image names do not agree (names are POSIX paths relative to the image folder, exact; "
                            f"e.g. {sorted(have_feat)[:1]} in the features, {sorted(have_img)[:1]} in the folder): "
                            + "; ".join(problems))


# ------------------------------------------------------------------------------ database


@dataclass
class ColmapResult(JsonResult):
    """What :func:`write_colmap_database` wrote: images, cameras, keypoints, pairs and raw matches
    imported, pairs verified by two-view geometry and their inlier matches (0 without
    verification), wall time (s) and the camera options."""

    database: str
    images_dir: str
    images: int
    cameras: int
    keypoints: int
    pairs: int
    matches: int
    verified_pairs: int
    inlier_matches: int
    seconds: float
    camera: dict[str, Any]


def write_colmap_database(features: str | Path, matches: str | Path, images_dir: str | Path, database: str | Path, *,
                          camera: CameraOptions = CameraOptions(), overwrite: bool = False, verify: bool = True,
                          progress: Progress | None = None, verbose: bool = False) -> ColmapResult:
    """Write an hloc features file and matches file into a new COLMAP database (see the module
    docstring for the conventions).

    Args:
        features: hloc features file (``descbal extract``); its images define the database's.
        matches: hloc matches file (``descbal match``); every pair in it is imported.
        images_dir: the folder the names are relative to (COLMAP reads image sizes and EXIF there).
        database: the ``.db`` to create.
        camera: camera model, intrinsics, single camera.
        verify: run pycolmap's two-view geometric verification on the imported pairs.
        progress: ``progress("database", done, total)`` over images then pairs; ``"verify"``.

    Returns:
        A :class:`ColmapResult`.

    Raises:
        BadInputError: ``database`` exists (without ``overwrite``), names that do not agree (all
            listed), an unknown camera model, bad intrinsics; nothing is written then.
        DataMissingError: a missing input file or folder.
    """
    t0 = time.perf_counter()
    pycolmap = import_pycolmap()
    features, matches, images_dir, database = Path(features), Path(matches), Path(images_dir), Path(database)
    progress = or_no_progress(progress)
    if database.exists() and not overwrite:
        raise BadInputError("database exists; use --overwrite or another --database", database)
    if camera.model not in CAMERA_PARAMS:
        raise BadInputError(f"unknown camera model {camera.model!r}; choose from {', '.join(CAMERA_PARAMS)}")
    feature_names = _feature_names(features)
    image_names = [p.relative_to(images_dir).as_posix() for p in list_images(images_dir)]
    pairs, unknown = read_match_pairs(matches, sorted(set(feature_names) | set(image_names)))
    check_names(features, feature_names, images_dir, image_names, matches, unknown, pairs)
    if not feature_names:
        raise BadInputError("holds no keypoints", features)
    Ks = _intrinsics_for(feature_names, camera.intrinsics)

    n_kp = n_match = 0
    with atomic_path(database, suffix=".db") as tmp, colmap_log(verbose), tempfile.TemporaryDirectory() as work:
        tmp.unlink()  # COLMAP creates the file itself
        pycolmap.Database.open(tmp).close()
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = camera.model
        mode = pycolmap.CameraMode.SINGLE if camera.single_camera else pycolmap.CameraMode.PER_IMAGE
        pycolmap.import_images(tmp, images_dir, mode, feature_names, reader)
        total = len(feature_names) + len(pairs)
        progress("database", 0, total)
        with pycolmap.Database.open(tmp) as db, h5py.File(features, "r", locking=False) as fh, \
                h5py.File(matches, "r", locking=False) as mh:
            ids = {im.name: im.image_id for im in db.read_all_images()}
            if Ks:
                seen: set[int] = set()
                for im in db.read_all_images():
                    if im.camera_id in seen:
                        continue
                    seen.add(im.camera_id)
                    cam = db.read_camera(im.camera_id)
                    cam.params = colmap_camera_params(camera.model, Ks[im.name])
                    cam.has_prior_focal_length = True
                    db.update_camera(cam)
            for i, name in enumerate(feature_names):
                kp = to_colmap_keypoints(fh[name]["keypoints"][...])
                db.write_keypoints(ids[name], kp)
                n_kp += len(kp)
                progress("database", i + 1, total)
            done: set[tuple[str, str]] = set()
            for j, (n0, n1) in enumerate(pairs):
                if (n0, n1) in done or (n1, n0) in done or n0 == n1:
                    continue
                done.add((n0, n1))
                m0 = np.asarray(mh[names_to_pair(n0, n1)]["matches0"][...])
                idx = np.flatnonzero(m0 >= 0)
                db.write_matches(ids[n0], ids[n1], np.stack([idx, m0[idx]], axis=1).astype(np.uint32))
                n_match += len(idx)
                progress("database", len(feature_names) + j + 1, total)
            n_cams = db.num_cameras()
        verified = inliers = 0
        if verify and done:
            pairs_file = Path(work) / "pairs.txt"
            pairs_file.write_text("".join(f"{a} {b}\n" for a, b in sorted(done)), encoding="utf-8")
            progress("verify", 0, 1)
            pycolmap.verify_matches(tmp, pairs_file, pycolmap.TwoViewGeometryOptions())
            progress("verify", 1, 1)
            with pycolmap.Database.open(tmp) as db:
                _, counts = db.read_two_view_geometry_num_inliers()
                verified = sum(1 for c in counts if c > 0)
                inliers = int(sum(counts))
    return ColmapResult(database=str(database), images_dir=str(images_dir), images=len(feature_names), cameras=n_cams,
                        keypoints=n_kp, pairs=len(done), matches=n_match, verified_pairs=verified, inlier_matches=inliers,
                        seconds=time.perf_counter() - t0,
                        camera={"model": camera.model, "intrinsics": camera.intrinsics,
                                "single_camera": camera.single_camera})

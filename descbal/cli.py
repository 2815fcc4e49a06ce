"""The ``descbal`` command line. It only parses arguments and calls library functions.

Data go to stdout (``--json -``); tables, logs and progress to stderr. Exit codes: 0 ok,
1 runtime failure, 2 bad usage or bad input, 3 data missing or checksum mismatch,
130 interrupted.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from descbal import __version__
from descbal.detectors import DETECTORS
from descbal.errors import DescbalError
from descbal.geometry import ANGLE_UNITS, PIXEL_ORIGINS, SIZE_KINDS

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="descbal",
    help="Learned local patch descriptors: download, cache, train, evaluate, extract.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
eval_app = typer.Typer(help="Evaluate descriptors: HPatches (official protocol) and Brown FPR95.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def handle_errors(fn: F) -> F:
    """Turn user-facing errors into one line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from descbal.console import stderr

        try:
            return fn(*args, **kwargs)
        except DescbalError as e:
            stderr.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            stderr.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"descbal {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """descbal: learned local patch descriptors."""


JsonOpt = Annotated[str | None, typer.Option("--json", help="Write the result as JSON to FILE, or '-' for stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")]


class Task(str, Enum):
    verification = "verification"
    matching = "matching"
    retrieval = "retrieval"


class Dist(str, Enum):
    L2 = "L2"
    L1 = "L1"


class FprDef(str, Enum):
    hardnet = "hardnet"
    hynet = "hynet"


def _print_tables(tables: list, quiet: bool) -> None:
    from descbal.console import stderr

    if not quiet:
        for t in tables:
            stderr.print(t)


@eval_app.command("hpatches")
@handle_errors
def eval_hpatches(
    tasks: Annotated[Path | None, typer.Option("--tasks", "-t", help="Folder with splits/splits.json and the task CSVs "
                                                                     "(default with --patches: tasks/ beside it).")] = None,
    descriptors: Annotated[Path | None, typer.Option("--descriptors", "-d",
                                                     help="DIR/<sequence>/<type>.csv (or .npy), the official layout.")] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Checkpoint, run folder or published weights.")] = None,
    patches: Annotated[Path | None, typer.Option("--patches", help="HPatches cache .h5 (descbal cache hpatches) "
                                                                  "or a release folder of PNGs.")] = None,
    export_csv: Annotated[Path | None, typer.Option("--export-csv", help="With --model: also write official CSVs here.")]
    = None,
    split: Annotated[str, typer.Option(help="Split name: a, b, c, full, illum, view, ...")] = "a",
    task: Annotated[list[Task] | None, typer.Option("--task", help="Task to run (repeatable; default: all three).")] = None,
    dist: Annotated[Dist, typer.Option("--dist", help="Descriptor distance.")] = Dist.L2,
    delimiter: Annotated[str, typer.Option(help="CSV delimiter of the descriptor files.")] = ",",
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the binary descriptor cache.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (with --model).")] = "auto",
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """HPatches verification / matching / retrieval, exactly the official Python protocol."""
    from descbal.console import emit_json, task_progress
    from descbal.errors import BadInputError
    from descbal.eval.hpatches import TASKS, evaluate_hpatches
    from descbal.eval.hpatches_io import get_split, load_descriptors
    from descbal.eval.report import hpatches_tables

    if (model is None) == (descriptors is None):
        raise BadInputError("give either --descriptors DIR or --model M (with --patches CACHE.h5)")
    if tasks is None:
        if patches is None:
            raise BadInputError("--tasks DIR is required")
        tasks = patches.parent / "tasks"
    spl = get_split(tasks, split)
    if model is not None:
        if patches is None:
            raise BadInputError("--model needs --patches CACHE.h5 (from 'descbal cache hpatches')")
        from descbal.devices import resolve_device
        from descbal.eval.hpatches_io import write_descriptor_tree
        from descbal.eval.model_eval import hpatches_descriptors
        from descbal.models import load

        dev = resolve_device(device)
        desc = hpatches_descriptors(load(model).to(dev), patches, spl["test"], device=dev)
        if export_csv is not None:
            write_descriptor_tree(export_csv, desc)
    else:
        desc = load_descriptors(descriptors, spl["test"], delimiter=delimiter, use_cache=not no_cache)
    chosen = [t.value for t in task] if task else list(TASKS)
    with task_progress(quiet) as progress:
        result = evaluate_hpatches(desc, tasks, split, chosen, dist.value, progress=progress)
    _print_tables(hpatches_tables(result), quiet)
    emit_json(result, json_out)


@eval_app.command("brown")
@handle_errors
def eval_brown(
    pairs: Annotated[Path | None, typer.Option("--pairs", "-p", help="m50_*.txt pairs file, or a Brown cache .h5.")] = None,
    descriptors: Annotated[Path | None, typer.Option("--descriptors", "-d",
                                                     help="Per-patch descriptors: .npy (N, D) or .h5 'descriptors'.")] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Checkpoint, run folder or published weights.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Brown cache .h5 (patches + pairs) for --model.")] = None,
    definition: Annotated[FprDef, typer.Option("--fpr", help="FPR95 definition.")] = FprDef.hardnet,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (with --model).")] = "auto",
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Brown / UBC PhotoTour FPR at 95 % recall: --pairs + --descriptors, or --model + --data."""
    from descbal.console import emit_json
    from descbal.errors import BadInputError
    from descbal.eval.brown import evaluate_brown, load_patch_descriptors, read_pairs
    from descbal.eval.report import brown_table

    if model is not None:
        if data is None or pairs is not None or descriptors is not None:
            raise BadInputError("--model needs --data SET.h5 (and no --pairs/--descriptors)")
        from descbal.data.patchset import load_patchset
        from descbal.devices import resolve_device
        from descbal.eval.model_eval import evaluate_brown_model
        from descbal.models import load

        dev = resolve_device(device)
        result = evaluate_brown_model(load(model).to(dev), load_patchset(data), definition.value, device=dev)
    else:
        if pairs is None or descriptors is None:
            raise BadInputError("give --pairs and --descriptors, or --model and --data")
        id1, id2, labels = read_pairs(pairs)
        result = evaluate_brown(load_patch_descriptors(descriptors), id1, id2, labels, definition.value, source=pairs)
    _print_tables([brown_table(result)], quiet)
    emit_json(result, json_out)


@eval_app.command("example")
@handle_errors
def eval_example(
    out: Annotated[Path | None, typer.Option(help="Keep the generated example here (default: a temporary folder).")] = None,
    descriptor: Annotated[str, typer.Option(help="Built-in baseline descriptor: sift or rootsift.")] = "sift",
    seed: Annotated[int, typer.Option(help="Seed of the generated example.")] = 0,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Generate a small HPatches-style example, describe it with a baseline, evaluate it."""
    from descbal.classical import CLASSICAL
    from descbal.console import emit_json, stderr, task_progress
    from descbal.errors import BadInputError
    from descbal.eval.example import run_example
    from descbal.eval.report import hpatches_tables

    if descriptor not in CLASSICAL:
        raise BadInputError(f"unknown descriptor {descriptor!r}; choose from {', '.join(CLASSICAL)}")
    with tempfile.TemporaryDirectory(prefix="descbal-example-") as tmp:
        where = out if out is not None else Path(tmp)
        with task_progress(quiet) as progress:
            result = run_example(where, descriptor=descriptor, seed=seed, progress=progress)
        _print_tables(hpatches_tables(result), quiet)
        if out is not None and not quiet:
            stderr.print(f"example written to {out} (patches/, descriptors/{descriptor}/, tasks/)")
    emit_json(result, json_out)


# choices from descbal.geometry, so the CLI cannot drift from what PatchGeometry accepts
SizeKind = Enum("SizeKind", {v: v for v in SIZE_KINDS}, type=str)  # type: ignore[misc]
AngleUnit = Enum("AngleUnit", {v: v for v in ANGLE_UNITS}, type=str)  # type: ignore[misc]
PixelOrigin = Enum("PixelOrigin", {v: v for v in PIXEL_ORIGINS}, type=str)  # type: ignore[misc]


class FeatFormat(str, Enum):
    hloc = "hloc"
    npz = "npz"
    colmap = "colmap"


_GEO = "Geometry (keypoint -> patch)"
# the detectors this OpenCV build has, from the one registry (descbal.detectors)
DetectorOpt = Annotated[str, typer.Option(help=DETECTORS.help())]
MaxKpOpt = Annotated[int, typer.Option("--max-keypoints", help="Keep the strongest keypoints by response (0: all).")]
MagOpt = Annotated[float, typer.Option(help="Patch side = mag x keypoint diameter.", rich_help_panel=_GEO)]
SizeKindOpt = Annotated[SizeKind, typer.Option("--size-kind", help="Keypoint size is a diameter or a sigma.",
                                               rich_help_panel=_GEO)]
AngleUnitOpt = Annotated[AngleUnit, typer.Option("--angle-unit", help="Keypoint angle unit.", rich_help_panel=_GEO)]
AngleSignOpt = Annotated[float, typer.Option("--angle-sign", help="+1: clockwise in y-down images (OpenCV); -1: the opposite.",
                                             rich_help_panel=_GEO)]
PixelOriginOpt = Annotated[PixelOrigin, typer.Option("--pixel-origin", help="center: pixel centres at integers (OpenCV, "
                                                     "hloc); corner: pixel (0,0) spans [0,1].", rich_help_panel=_GEO)]
UprightOpt = Annotated[bool, typer.Option("--upright", help="Ignore keypoint orientations.", rich_help_panel=_GEO)]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")]


def _geometry(mag: float, size_kind: SizeKind, angle_unit: AngleUnit, angle_sign: float, pixel_origin: PixelOrigin,
              upright: bool) -> Any:
    from descbal.errors import BadInputError
    from descbal.geometry import PatchGeometry

    if angle_sign not in (1.0, -1.0):
        raise BadInputError("--angle-sign must be 1 or -1")
    try:
        return PatchGeometry(mag=mag, size_kind=size_kind.value, angle_unit=angle_unit.value, angle_sign=angle_sign,
                             pixel_origin=pixel_origin.value, upright=upright)
    except ValueError as e:
        raise BadInputError(str(e)) from None


@app.command("extract")
@handle_errors
def extract_cmd(
    images_dir: Annotated[Path | None, typer.Argument(help="Folder of images (searched recursively).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Checkpoint, run folder, published weights "
                                              "(TFeat/HardNet/HyNet/SOSNet), or sift / rootsift (OpenCV).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Features file (hloc .h5) or folder (npz, colmap).")] = None,
    fmt: Annotated[FeatFormat, typer.Option("--format", help="hloc (HDF5), npz (one file per image) or colmap (text, "
                                            "lossy).")] = FeatFormat.hloc,
    detector: DetectorOpt = "sift",
    max_keypoints: MaxKpOpt = 2048,
    mag: MagOpt = 5.0,
    size_kind: SizeKindOpt = SizeKind.diameter,
    angle_unit: AngleUnitOpt = AngleUnit.deg,
    angle_sign: AngleSignOpt = 1.0,
    pixel_origin: PixelOriginOpt = PixelOrigin.center,
    upright: UprightOpt = False,
    half: Annotated[bool, typer.Option("--half", help="Store descriptors as float16.")] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="Run the network in bfloat16 (faster on GPUs and AVX512-BF16 "
                                       "CPUs; descriptors change by about 0.01 in L2).")] = False,
    batch_size: Annotated[int, typer.Option(help="Patches per forward pass.")] = 1024,
    device: DeviceOpt = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start the output afresh instead of skipping images "
                                            "already in it.")] = False,
    list_file: Annotated[Path | None, typer.Option("--list", help="Print the exact image keys stored in FILE and exit.")]
    = None,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Keypoints + descriptors for every image of a folder (hloc features file, npz or COLMAP text).

    Resumable: images already in --out are skipped. Exit code 1 when some image failed.
    """
    from descbal.console import emit_json, stderr
    from descbal.errors import BadInputError

    if list_file is not None:
        from descbal.extract.writers import list_features

        names = list_features(list_file)
        if json_out is not None:
            emit_json({"file": str(list_file), "names": names}, json_out)
        else:
            for n in names:
                typer.echo(n)
        return
    if images_dir is None or model is None or out is None:
        raise BadInputError("usage: descbal extract IMAGES_DIR --model MODEL --out FILE (or --list FILE)")
    from descbal.extract.pipeline import ExtractConfig, extract_folder
    from descbal.extract.progress import image_progress

    if max_keypoints < 0 or batch_size < 1:
        raise BadInputError("--max-keypoints must be >= 0 and --batch-size >= 1")
    cfg = ExtractConfig(model=model, detector=detector, max_keypoints=max_keypoints,
                        geometry=_geometry(mag, size_kind, angle_unit, angle_sign, pixel_origin, upright),
                        device=device, batch_size=batch_size, half=half, bf16=bf16)
    with image_progress("images", quiet) as progress:
        result = extract_folder(images_dir, out, cfg, fmt=fmt.value, overwrite=overwrite, progress=progress)
    if not quiet:
        for f in result["failed"]:
            stderr.print(f"[yellow]skipped[/yellow] {f['name']}: {f['reason']}", markup=True, soft_wrap=True)
        stderr.print(f"{out}: {result['extracted']} image(s) extracted ({result['num_keypoints']} keypoints, "
                     f"{result['images_per_s']:.1f} images/s), {result['skipped_existing']} already there, "
                     f"{len(result['failed'])} failed", soft_wrap=True)
    emit_json(result, json_out)
    if result["failed"]:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------ download

download_app = typer.Typer(help="Download Brown/UBC PhotoTour and HPatches from live mirrors, verified and resumable.",
                           no_args_is_help=True)
app.add_typer(download_app, name="download")

RootOpt = Annotated[Path | None, typer.Option("--root", help="Data folder (default: $DESCBAL_HOME or ~/.cache/descbal).")]
MirrorOpt = Annotated[list[str] | None,
                      typer.Option("--mirror", help="Archive URL tried before the built-in mirrors (repeatable).")]
ChecksumOpt = Annotated[str | None, typer.Option("--checksum", help="sha256:HEX or md5:HEX, overriding the built-in value.")]
FromFileOpt = Annotated[Path | None, typer.Option("--from-file", help="Ingest an archive fetched some other way.")]
KeepOpt = Annotated[bool, typer.Option("--keep-archive", help="Keep the archive after extraction.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds before a stalled connection is retried.")]


class Part(str, Enum):
    patches = "patches"
    sequences = "sequences"
    tasks = "tasks"
    all = "all"


def _run_fetch(files: list, root: Path | None, mirror: list[str] | None, checksum: str | None, from_file: Path | None,
               keep_archive: bool, timeout: float, json_out: str | None, quiet: bool) -> None:
    from rich.table import Table

    from descbal.console import byte_progress, emit_json, stderr
    from descbal.data.download import fetch
    from descbal.data.paths import default_root

    root = root if root is not None else default_root()
    with byte_progress(quiet) as progress:
        results = fetch(files, root, extra_mirrors=mirror or (), checksum=checksum, from_file=from_file,
                        keep_archive=keep_archive, progress=progress, timeout=timeout)
    if not quiet:
        t = Table(title=f"Downloads under {root}")
        for col in ("file", "status", "size (MB)", "sha256"):
            t.add_column(col)
        for r in results:
            status = "already downloaded" if r["skipped"] else ("resumed, verified" if r["resumed"] else "downloaded")
            if not r.get("verified", True):
                status += " (no known checksum: recorded in manifest.json)"
            t.add_row(r["key"], status, f"{r['size'] / 1e6:.1f}", r["sha256"][:16] + "...")
        stderr.print(t)
        if all(r["skipped"] for r in results):
            stderr.print("Everything was already downloaded; nothing to do.")
    emit_json({"root": str(root), "files": results}, json_out)


@download_app.command("brown")
@handle_errors
def download_brown(
    names: Annotated[list[str], typer.Argument(help="liberty, notredame, yosemite, *_harris, or all.")],
    root: RootOpt = None, mirror: MirrorOpt = None, checksum: ChecksumOpt = None, from_file: FromFileOpt = None,
    keep_archive: KeepOpt = False, timeout: TimeoutOpt = 30.0, json_out: JsonOpt = None, quiet: QuietOpt = False,
) -> None:
    """Brown / UBC PhotoTour patch sets (CTU mirror first, then the historic hosts)."""
    from descbal.data.sources import brown_files

    _run_fetch(brown_files(names), root, mirror, checksum, from_file, keep_archive, timeout, json_out, quiet)


@download_app.command("hpatches")
@handle_errors
def download_hpatches(
    part: Annotated[Part, typer.Option("--part", help="Which part of HPatches.")] = Part.all,
    root: RootOpt = None, mirror: MirrorOpt = None, checksum: ChecksumOpt = None, from_file: FromFileOpt = None,
    keep_archive: KeepOpt = False, timeout: TimeoutOpt = 30.0, json_out: JsonOpt = None, quiet: QuietOpt = False,
) -> None:
    """HPatches: the patches release, the sequences release and the benchmark task files."""
    from descbal.data.sources import hpatches_files

    _run_fetch(hpatches_files(part.value), root, mirror, checksum, from_file, keep_archive, timeout, json_out, quiet)


# ------------------------------------------------------------------------------ cache

cache_app = typer.Typer(help="Convert raw datasets into HDF5 patch caches (idempotent, atomic).", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Rebuild even if an up-to-date cache exists.")]


def _report_cache(results: list[dict], json_out: str | None, quiet: bool) -> None:
    from descbal.console import emit_json, stderr

    if not quiet:
        for r in results:
            what = "up to date, skipped" if r.get("skipped") else f"written in {r.get('seconds', 0):.1f} s"
            stderr.print(f"{r['path']}: {what}")
    emit_json(results if len(results) != 1 else results[0], json_out)


@cache_app.command("brown")
@handle_errors
def cache_brown_cmd(
    names: Annotated[list[str], typer.Argument(help="liberty, notredame, yosemite, *_harris, or all.")],
    root: RootOpt = None, overwrite: OverwriteOpt = False, json_out: JsonOpt = None, quiet: QuietOpt = False,
) -> None:
    """Brown raw folders (ROOT/brown/NAME) into ROOT/brown/NAME.h5 (patches, labels, pairs)."""
    from descbal.console import task_progress
    from descbal.data.brown import cache_brown
    from descbal.data.paths import default_root
    from descbal.data.sources import BROWN_NAMES, brown_files
    from descbal.errors import DataMissingError

    root = root if root is not None else default_root()
    if names == ["all"]:
        chosen = [n for n in BROWN_NAMES if (root / "brown" / n).is_dir()]
        if not chosen:
            raise DataMissingError("no downloaded Brown set under brown/; run 'descbal download brown' first", root)
    else:
        chosen = [f.key.split("/", 1)[1] for f in brown_files(names)]
    results = []
    with task_progress(quiet) as progress:
        for name in chosen:
            results.append(cache_brown(name, root, overwrite=overwrite, progress=progress))
    _report_cache(results, json_out, quiet)


@cache_app.command("hpatches")
@handle_errors
def cache_hpatches_cmd(
    root: RootOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output file (default ROOT/hpatches/hpatches.h5).")] = None,
    overwrite: OverwriteOpt = False, json_out: JsonOpt = None, quiet: QuietOpt = False,
) -> None:
    """The HPatches patches release into one HDF5 file; task files copied beside it."""
    from descbal.console import task_progress
    from descbal.data.hpatches_data import cache_hpatches
    from descbal.data.paths import default_root

    root = root if root is not None else default_root()
    with task_progress(quiet) as progress:
        result = cache_hpatches(root, out=out, overwrite=overwrite, progress=progress)
    _report_cache([result], json_out, quiet)


@cache_app.command("sequences")
@handle_errors
def cache_sequences_cmd(
    src: Annotated[Path, typer.Argument(help="Folder of sequences (1..6.ppm|png, H_1_2..H_1_6).")],
    out: Annotated[Path, typer.Option("--out", help="Output HDF5 file.")],
    overwrite: OverwriteOpt = False, json_out: JsonOpt = None, quiet: QuietOpt = False,
) -> None:
    """Image sequences with homographies into one HDF5 file."""
    from descbal.console import task_progress
    from descbal.data.sequences import cache_sequences

    with task_progress(quiet) as progress:
        result = cache_sequences(src, out, overwrite=overwrite, progress=progress)
    _report_cache([result], json_out, quiet)


# ------------------------------------------------------------------------------ train


@app.command("train")
@handle_errors
def train_cmd(
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (config, logs, checkpoints, model).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML file with the run configuration.")] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="A shipped recipe (see --list-recipes).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: section.key=value (repeatable).")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Training cache (.h5 with patches, labels).")] = None,
    val: Annotated[Path | None, typer.Option("--val", help="Validation cache (.h5 with pairs): FPR95 each epoch.")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in this folder exactly.")] = None,
    list_recipes: Annotated[bool, typer.Option("--list-recipes", help="Print the shipped recipes and exit.")] = False,
    show_recipe: Annotated[str | None, typer.Option("--show-recipe", help="Print a recipe's TOML (to copy) and exit.")]
    = None,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a descriptor. Precedence: defaults < --recipe < --config < --set < --data/--val."""
    from descbal.config import load_config
    from descbal.console import emit_json, stderr, train_progress
    from descbal.errors import BadInputError
    from descbal.recipes import recipe_names, recipe_text
    from descbal.train.config import RunConfig
    from descbal.train.trainer import resume_run, start_run

    if list_recipes:
        for name in recipe_names():
            typer.echo(name)
        return
    if show_recipe is not None:
        typer.echo(recipe_text(show_recipe), nl=False)
        return
    if resume is not None:
        if config or recipe or set_ or data or val:
            raise BadInputError("--resume continues a run with its own config; drop the other options")
        trainer = resume_run(resume)
    else:
        if out is None:
            raise BadInputError("--out RUN_DIR is required (or --resume RUN_DIR)")
        sources: list = ([recipe_text(recipe)] if recipe else []) + ([config] if config else [])
        overrides = list(set_ or [])
        if data is not None:
            overrides.append(f"data.train={json.dumps(str(data.resolve()))}")  # a TOML basic string
        if val is not None:
            overrides.append(f"data.val={json.dumps(str(val.resolve()))}")
        trainer = start_run(load_config(RunConfig, sources, overrides), out)
    if not quiet:
        stderr.print(f"run folder {trainer.run_dir}; device {trainer.device}; step "
                     f"{trainer.global_step}/{trainer.total_steps}")
    try:
        with train_progress(quiet) as progress:
            summary = trainer.fit(progress=progress)
    except KeyboardInterrupt:
        stderr.print(f"interrupted: checkpoint saved; continue with 'descbal train --resume {trainer.run_dir}'")
        raise typer.Exit(130) from None
    if not quiet:
        for rec in summary.get("validation", []):
            if rec["val_fpr95"] is not None:
                stderr.print(f"epoch {rec['epoch']}: validation FPR95 {100 * rec['val_fpr95']:.2f} %")
        stderr.print(f"model written to {summary['model']}")
    emit_json(summary, json_out)


@cache_app.command("images")
@handle_errors
def cache_images_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder of photos (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", help="Output patch pool (.h5, Brown schema + holdout).")],
    detector: DetectorOpt = "sift",
    max_keypoints: Annotated[int, typer.Option(help="Keypoints per photo, strongest first.")] = 300,
    views: Annotated[int, typer.Option(help="Views per keypoint (the photo itself plus random homographies).")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    mag: Annotated[float, typer.Option(help="Patch side = mag x keypoint diameter (pixels).")] = 5.0,
    holdout: Annotated[float, typer.Option(help="Fraction of photos held out for the FPR95 pairs.")] = 0.1,
    overwrite: OverwriteOpt = False, json_out: JsonOpt = None, quiet: QuietOpt = False,
) -> None:
    """Self-supervised training patches from any photos: keypoints, random homographies,
    photometric changes and detector noise; held-out pairs for FPR95."""
    from descbal.console import emit_json, stderr, task_progress
    from descbal.data.selfsup import PoolConfig, cache_images
    from descbal.errors import BadInputError
    from descbal.geometry import PatchGeometry

    try:
        cfg = PoolConfig(seed=seed, detector=detector, max_keypoints=max_keypoints, views=views,
                         geometry=PatchGeometry(mag=mag), holdout_fraction=holdout)
    except ValueError as e:
        raise BadInputError(str(e)) from None
    with task_progress(quiet) as progress:
        result = cache_images(folder, out, cfg, overwrite=overwrite, progress=progress)
    if not quiet:
        if result["skipped"]:
            stderr.print(f"{out}: up to date, skipped")
        else:
            for s in result["skipped_images"]:
                stderr.print(f"skipped {s['path']}: {s['reason']}")
            stderr.print(f"{out}: {result['num_patches']} patches of {result['num_classes']} keypoints from "
                         f"{result['images'] - len(result['skipped_images'])} photos, {result['num_pairs']} held-out pairs")
    emit_json(result, json_out)


@app.command("make-benchmark")
@handle_errors
def make_benchmark_cmd(
    sequences: Annotated[Path, typer.Argument(help="Sequences with homographies (1..6.ppm|png, H_1_2..H_1_6).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (patches/ in the HPatches layout, tasks/).")],
    max_keypoints: Annotated[int, typer.Option(help="Patches per sequence.")] = 1000,
    split: Annotated[str, typer.Option(help="Name of the split covering all sequences.")] = "full",
    seed: Annotated[int, typer.Option(help="Seed of the jitter and the task files.")] = 0,
    json_out: JsonOpt = None, quiet: QuietOpt = False,
) -> None:
    """An HPatches-format patch benchmark (easy/hard/tough jitter, official task files) from image
    sequences with ground-truth homographies; score it with 'descbal eval hpatches'."""
    from descbal.console import emit_json, stderr, task_progress
    from descbal.data.make_benchmark import BenchmarkConfig, make_benchmark

    with task_progress(quiet) as progress:
        result = make_benchmark(sequences, out, BenchmarkConfig(seed=seed, max_keypoints=max_keypoints, split=split),
                                progress=progress)
    if not quiet:
        for s in result["skipped"]:
            stderr.print(f"skipped {s['sequence']}: {s['reason']}")
        stderr.print(f"benchmark written to {out}: {len(result['sequences'])} sequences; evaluate with "
                     f"'descbal eval hpatches --descriptors DIR --tasks {out / 'tasks'} --split {split}'")
    emit_json(result, json_out)


@app.command("quickstart")
@handle_errors
def quickstart_cmd(
    out: Annotated[Path, typer.Option("--out", help="Working folder (pool, run/model.pt, benchmark).")] = Path(
        "descbal-quickstart"),
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="Shrink every stage (a smoke test, under a minute).")] = False,
    json_out: JsonOpt = None, quiet: QuietOpt = False,
) -> None:
    """No download, a few minutes on a CPU: self-supervised pool from photos shipped with
    scikit-image, Self-TNet small training, a benchmark from held-out photos, and a comparison
    of the trained model, the untrained network and SIFT."""
    from rich.table import Table

    from descbal.console import emit_json, stderr, task_progress
    from descbal.quickstart import run_quickstart

    with task_progress(quiet) as progress:
        result = run_quickstart(out, seed=seed, quick=quick, progress=progress,
                                log=(lambda m: None) if quiet else stderr.print)
    if not quiet:
        t = Table(title="Quickstart: held-out synthetic benchmark (HPatches protocol, %)")
        for col in ("descriptor", "verification", "matching", "retrieval", "pool FPR95"):
            t.add_column(col, justify="right")
        for r in result["rows"]:
            fpr = "-" if r["fpr95"] is None else f"{100 * r['fpr95']:.2f}"
            t.add_row(r["descriptor"], f"{100 * r['verification']:.2f}", f"{100 * r['matching']:.2f}",
                      f"{100 * r['retrieval']:.2f}", fpr)
        stderr.print(t)
        stderr.print(f"trained model: {result['model']} (use it with 'descbal extract IMAGES --model {result['model']}')")
    emit_json(result, json_out)


# ------------------------------------------------------------------------------ match


@app.command("match")
@handle_errors
def match_cmd(
    features: Annotated[Path, typer.Argument(help="hloc features file (descbal extract).")],
    pairs: Annotated[Path, typer.Option("--pairs", "-p", help="Text file of image pairs, 'name0 name1' per line.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="hloc matches file (.h5).")],
    ratio: Annotated[float | None, typer.Option("--ratio", help="Also apply Lowe's ratio test (e.g. 0.8).")] = None,
    device: DeviceOpt = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute pairs already in --out.")] = False,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Mutual-nearest-neighbour matches of image pairs into an hloc matches file."""
    from descbal.console import emit_json, stderr
    from descbal.devices import resolve_device
    from descbal.errors import BadInputError
    from descbal.extract.progress import image_progress
    from descbal.match import match_features

    if ratio is not None and not 0 < ratio <= 1:
        raise BadInputError("--ratio must be in (0, 1]")
    with image_progress("pairs", quiet) as progress:
        result = match_features(features, pairs, out, ratio=ratio, overwrite=overwrite, device=resolve_device(device),
                                progress=progress)
    if not quiet:
        stderr.print(f"{out}: {result['matched']} pair(s) matched ({result['mean_matches']:.0f} matches on average), "
                     f"{result['skipped_existing']} already there", soft_wrap=True)
    emit_json(result, json_out)


@eval_app.command("sequences")
@handle_errors
def eval_sequences_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder of sequences (<seq>/1..6.ppm|png, H_1_k), e.g. HPatches.")],
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model path or sift / rootsift (repeatable).")],
    sequence: Annotated[list[str] | None, typer.Option("--sequence", help="Only this sequence (repeatable).")] = None,
    detector: DetectorOpt = "sift",
    max_keypoints: MaxKpOpt = 2048,
    ratio: Annotated[float | None, typer.Option("--ratio", help="Also apply Lowe's ratio test.")] = None,
    mag: MagOpt = 5.0,
    size_kind: SizeKindOpt = SizeKind.diameter,
    angle_unit: AngleUnitOpt = AngleUnit.deg,
    angle_sign: AngleSignOpt = 1.0,
    pixel_origin: PixelOriginOpt = PixelOrigin.center,
    upright: UprightOpt = False,
    device: DeviceOpt = "auto",
    plot: Annotated[Path | None, typer.Option("--plot", help="Write MMA against threshold as a PNG.")] = None,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Matching on sequences with homographies: MMA at 1..10 px (D2-Net protocol), matches,
    features and homography accuracy at 1/3/5 px, split by i_/v_ sequences."""
    from rich.table import Table

    from descbal.console import emit_json, stderr
    from descbal.eval.sequences import evaluate_sequences, plot_mma
    from descbal.extract.progress import image_progress

    geometry = _geometry(mag, size_kind, angle_unit, angle_sign, pixel_origin, upright)
    with image_progress("pairs", quiet) as progress:
        result = evaluate_sequences(folder, model, detector=detector, max_keypoints=max_keypoints, geometry=geometry,
                                    ratio=ratio, device=device, sequences=sequence, progress=progress)
    if plot is not None:
        plot_mma(result, plot)
    if not quiet:
        t = Table(title=f"Sequences under {folder} ({len(result['sequences'])}; detector {detector})")
        for col in ("model", "split", "pairs", "MMA@1", "MMA@3", "MMA@5", "MMA@10", "features", "matches",
                    "H@1", "H@3", "H@5"):
            t.add_column(col, justify="left" if col in ("model", "split") else "right")
        for m in result["models"]:
            for split in ("overall", "illumination", "viewpoint"):
                mma = m["mma"][split]
                if mma is None:
                    continue
                h = m["homography_accuracy"][split]
                t.add_row(m["name"], split, str(m["num_pairs"][split]), *(f"{mma[i]:.3f}" for i in (0, 2, 4, 9)),
                          f"{m['num_features']:.0f}", f"{m['num_matches'][split]:.0f}", *(f"{h[e]:.3f}" for e in ("1", "3", "5")))
        stderr.print(t)
        if plot is not None:
            stderr.print(f"plot written to {plot}")
    emit_json(result, json_out)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

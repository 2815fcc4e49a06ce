"""The ``descbal`` command line. It only parses arguments and calls library functions.

Data go to stdout (``--json -``); tables, logs and progress to stderr. Exit codes: 0 ok,
1 runtime failure, 2 bad usage or bad input, 3 data missing or checksum mismatch,
130 interrupted. Commands that skip bad inputs exit 0 with a warning, 1 with ``--strict``.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from descbal import __version__
from descbal.detectors import DETECTORS
from descbal.errors import DescbalError
from descbal.geometry import ANGLE_UNITS, PIXEL_ORIGINS, SIZE_KINDS

F = TypeVar("F", bound=Callable[..., Any])


def _flags_without_placeholder(params: list[Any]) -> list[Any]:
    """Typer's rich help prints a ``<bool>`` value placeholder after flags, which take no value
    (``--quiet true`` is refused): an empty metavar leaves the type column blank for them."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class FlagCommand(TyperCommand):
    """A command whose help shows flags (``--quiet``, ``--overwrite``...) without a value."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_placeholder(super().get_params(ctx))


class FlagGroup(TyperGroup):
    """A command group whose help shows flags (``--help``, ``--version``) without a value."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_placeholder(super().get_params(ctx))


class App(typer.Typer):
    """``typer.Typer`` whose commands and groups follow the option conventions of the help."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=FlagGroup, **kwargs)

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or FlagCommand, **kwargs)


app = App(
    name="descbal",
    help="Learned local patch descriptors: download, cache, train, evaluate, extract.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
eval_app = App(help="Evaluate descriptors: HPatches (official protocol), Brown FPR95, image matching on sequences and "
                    "stereo pairs.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def handle_errors(fn: F) -> F:
    """Turn user-facing errors into one line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from descbal.console import stderr

        try:
            return fn(*args, **kwargs)
        except DescbalError as e:
            from rich.markup import escape

            # escaped: messages quote TOML tables ("[anneal]") and paths that rich would take as markup
            stderr.print(f"[red]error:[/red] {escape(str(e))}", markup=True, highlight=False, soft_wrap=True)
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
#: What every --model accepts (descbal.models.resolve.resolve_model).
MODEL_HELP = ("Checkpoint, run folder, published weights (Self-TNet/HyNet/HardNet/HardNet8/SOSNet/TFeat), an "
              "architecture name (untrained, seeded), or sift / rootsift; NAME=MODEL shows it as NAME "
              "(extract also runs a FILE.onnx of descbal export).")
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")]


# The option conventions (README, Conventions; tests/test_cli_conventions.py): an output is
# -o/--out, a model -m/--model, a seed --seed, in every command that has one.
def out_option(help: str) -> Any:
    """``-o/--out``: the file or folder a command writes."""
    return typer.Option("--out", "-o", help=help)


def model_option(help: str = MODEL_HELP) -> Any:
    """``-m/--model``: any model spec (:func:`descbal.models.resolve.resolve_model`)."""
    return typer.Option("--model", "-m", help=help)


def seed_option(help: str = "Seed of every random choice.") -> Any:
    """``--seed``."""
    return typer.Option("--seed", help=help)


StrictOpt = Annotated[bool, typer.Option("--strict", help="Exit 1 when any input was skipped (default: exit 0 with a "
                                         "warning; the JSON lists the skipped inputs).")]


def _finish_skipped(result: Any, strict: bool, quiet: bool) -> None:
    """The one skipped-inputs policy (descbal.results): warn, and exit 1 only with --strict."""
    from descbal.console import show
    from descbal.report import skipped_summary
    from descbal.results import skipped_exit_code

    show(skipped_summary(result, strict), quiet)
    code = skipped_exit_code(result, strict)
    if code:
        raise typer.Exit(code)


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


@eval_app.command("hpatches")
@handle_errors
def eval_hpatches(
    tasks: Annotated[Path | None, typer.Option("--tasks", "-t", help="Folder with splits/splits.json and the task CSVs "
                                                                     "(default with --patches: tasks/ beside it).")] = None,
    descriptors: Annotated[Path | None, typer.Option("--descriptors", "-d",
                                                     help="DIR/<sequence>/<type>.csv (or .npy), the official layout.")] = None,
    model: Annotated[str | None, model_option()] = None,
    patches: Annotated[Path | None, typer.Option("--patches", help="HPatches cache .h5 (descbal cache hpatches) "
                                                                  "or a release folder of PNGs.")] = None,
    export_csv: Annotated[Path | None, typer.Option("--export-csv", help="With --model: also write official CSVs here.")]
    = None,
    split: Annotated[str | None, typer.Option(help="Split name: a, b, c, full, illum, view, ... (default: the task "
                                                   "folder's only split, else a).")] = None,
    task: Annotated[list[Task] | None, typer.Option("--task", help="Task to run (repeatable; default: all three).")] = None,
    dist: Annotated[Dist, typer.Option("--dist", help="Descriptor distance.")] = Dist.L2,
    delimiter: Annotated[str, typer.Option(help="CSV delimiter of the descriptor files.")] = ",",
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the binary descriptor cache.")] = False,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """HPatches verification / matching / retrieval, exactly the official Python protocol."""
    from descbal.console import emit_json, progress_reporter, show
    from descbal.eval.model_eval import run_hpatches
    from descbal.report import hpatches_tables

    with progress_reporter(quiet) as progress:
        result = run_hpatches(tasks, split, descriptors=descriptors, model=model, patches=patches, export_csv=export_csv,
                              task_names=[t.value for t in task] if task else None, dist=dist.value, delimiter=delimiter,
                              use_cache=not no_cache, device=device, progress=progress,
                              log=lambda line: show([line], quiet))
    show(hpatches_tables(result), quiet)
    emit_json(result.to_json(), json_out)


@eval_app.command("brown")
@handle_errors
def eval_brown(
    pairs: Annotated[Path | None, typer.Option("--pairs", "-p", help="m50_*.txt pairs file, or a Brown cache .h5.")] = None,
    descriptors: Annotated[Path | None, typer.Option("--descriptors", "-d",
                                                     help="Per-patch descriptors: .npy (N, D) or .h5 'descriptors'.")] = None,
    model: Annotated[str | None, model_option()] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Brown cache .h5 (patches + pairs) for --model.")] = None,
    definition: Annotated[FprDef, typer.Option("--fpr", help="FPR95 definition.")] = FprDef.hardnet,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Brown / UBC PhotoTour FPR at 95 % recall: --pairs + --descriptors, or --model + --data."""
    from descbal.console import emit_json, show
    from descbal.eval.model_eval import run_brown
    from descbal.report import brown_table

    result = run_brown(pairs=pairs, descriptors=descriptors, model=model, data=data, definition=definition.value,
                       device=device)
    show([brown_table(result)], quiet)
    emit_json(result.to_json(), json_out)


@eval_app.command("example")
@handle_errors
def eval_example(
    out: Annotated[Path | None, out_option("Keep the generated example here (default: a temporary folder).")] = None,
    model: Annotated[str, model_option()] = "sift",
    seed: Annotated[int, seed_option("Seed of the generated example.")] = 0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Generate a small HPatches-style example, describe it (SIFT by default), evaluate it."""
    from descbal.console import emit_json, progress_reporter, show
    from descbal.eval.example import run_example
    from descbal.report import example_report

    with tempfile.TemporaryDirectory(prefix="descbal-example-") as tmp:
        where = out if out is not None else Path(tmp)
        with progress_reporter(quiet) as progress:
            result = run_example(where, model=model, seed=seed, progress=progress, device=device)
        show(example_report(result, out), quiet)
    emit_json(result.to_json(), json_out)


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
MagOpt = Annotated[float | None, typer.Option(help="Patch side = mag x keypoint diameter (default: the mag the model "
                                             "was trained with, else 5).", rich_help_panel=_GEO)]
SizeKindOpt = Annotated[SizeKind, typer.Option("--size-kind", help="Keypoint size is a diameter or a sigma.",
                                               rich_help_panel=_GEO)]
AngleUnitOpt = Annotated[AngleUnit, typer.Option("--angle-unit", help="Keypoint angle unit.", rich_help_panel=_GEO)]
AngleSignOpt = Annotated[float, typer.Option("--angle-sign", help="+1: clockwise in y-down images (OpenCV); -1: the opposite.",
                                             rich_help_panel=_GEO)]
PixelOriginOpt = Annotated[PixelOrigin, typer.Option("--pixel-origin", help="center: pixel centres at integers (OpenCV, "
                                                     "hloc); corner: pixel (0,0) spans [0,1].", rich_help_panel=_GEO)]
UprightOpt = Annotated[bool | None, typer.Option("--upright", help="Ignore keypoint orientations (default: as the "
                                                 "model was trained, else oriented).", rich_help_panel=_GEO)]
# the same option where patches are cut for training (recorded in the set, so the model inherits it)
CutUprightOpt = Annotated[bool | None, typer.Option("--upright", help="Cut every patch upright, ignoring keypoint "
                                                    "orientations (recorded in the set's geometry).")]


def _geometry(mag: float | None, size_kind: SizeKind, angle_unit: AngleUnit, angle_sign: float,
              pixel_origin: PixelOrigin, upright: bool | None) -> Any:
    """The geometry options (descbal.geometry.GeometryOptions); mag / upright None: not given."""
    from descbal.geometry import geometry_from_options

    return geometry_from_options(mag, size_kind.value, angle_unit.value, angle_sign, pixel_origin.value, upright)


@app.command("extract")
@handle_errors
def extract_cmd(
    images_dir: Annotated[Path | None, typer.Argument(help="Folder of images (searched recursively).")] = None,
    model: Annotated[str | None, model_option()] = None,
    out: Annotated[Path | None, out_option("Features file (hloc .h5) or folder (npz, colmap).")] = None,
    fmt: Annotated[FeatFormat, typer.Option("--format", help="hloc (HDF5), npz (one file per image) or colmap (text, "
                                            "lossy).")] = FeatFormat.hloc,
    detector: DetectorOpt = "sift",
    max_keypoints: MaxKpOpt = 2048,
    mag: MagOpt = None,
    size_kind: SizeKindOpt = SizeKind.diameter,
    angle_unit: AngleUnitOpt = AngleUnit.deg,
    angle_sign: AngleSignOpt = 1.0,
    pixel_origin: PixelOriginOpt = PixelOrigin.center,
    upright: UprightOpt = None,
    half: Annotated[bool, typer.Option("--half", help="Store descriptors as float16.")] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="Run the network in bfloat16 (faster on GPUs and AVX512-BF16 "
                                       "CPUs; descriptors change by about 0.01 in L2).")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="Compile the network with torch.compile (inductor): "
                                          "the first image is slower (compilation), later ones may be faster; "
                                          "without a C++ compiler (Triton on CUDA) it runs eager with a "
                                          "warning.")] = False,
    batch_size: Annotated[int, typer.Option(help="Patches per forward pass.")] = 1024,
    device: DeviceOpt = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start the output afresh instead of skipping images "
                                            "already in it.")] = False,
    list_file: Annotated[Path | None, typer.Option("--list", help="Print the exact image keys stored in FILE and exit.")]
    = None,
    strict: StrictOpt = False,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Keypoints + descriptors for every image of a folder (hloc features file, npz or COLMAP text).

    Resumable: images already in --out are skipped. Unreadable or keypoint-less images are
    skipped with a warning (exit 1 with --strict).
    """
    from descbal.console import emit_json, progress_reporter, show
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
    from descbal.report import extract_report

    if max_keypoints < 0 or batch_size < 1:
        raise BadInputError("--max-keypoints must be >= 0 and --batch-size >= 1")
    cfg = ExtractConfig(model=model, detector=detector, max_keypoints=max_keypoints,
                        geometry=_geometry(mag, size_kind, angle_unit, angle_sign, pixel_origin, upright),
                        device=device, batch_size=batch_size, half=half, bf16=bf16, compile=compile)
    with progress_reporter(quiet) as progress:
        result = extract_folder(images_dir, out, cfg, fmt=fmt.value, overwrite=overwrite, progress=progress)
    show(extract_report(result), quiet)
    emit_json(result.to_json(), json_out)
    _finish_skipped(result, strict, quiet)


# ------------------------------------------------------------------------------ export


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


@app.command("export")
@handle_errors
def export_cmd(
    model: Annotated[str, typer.Argument(help=MODEL_HELP.replace(", or sift / rootsift", "") + " A network only.")],
    out: Annotated[Path, out_option("The file to write (e.g. model.onnx, model.ts).")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="onnx (run by onnxruntime) or torchscript "
                                              "(torch.jit.load).")] = ExportFormat.onnx,
    fp16: Annotated[bool, typer.Option("--fp16", help="ONNX only: float16 weights and arithmetic, float32 input and "
                                       "output (max abs error about 1e-3, tolerance 5e-3).")] = False,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset (default 20; 18 or later).")] = None,
    check_patches: Annotated[Path | None, typer.Option("--check-patches", help="HPatches patch-column PNG (65 pixels "
                                                       "wide) whose patches join the parity check.")] = None,
    seed: Annotated[int, seed_option("Seed of the random parity patches and of an architecture's weights.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Export a descriptor network to ONNX or TorchScript, verified against descbal's descriptors.

    The file takes (N, 1, 32, 32) float32 patches in model units (grey levels 0..255 x the
    model's input_scale) and returns (N, D) descriptors; its metadata says so. Nothing is
    written (exit 1) when the file's descriptors differ by more than 1e-5 (fp32) from descbal's.
    """
    from descbal.console import emit_json, show
    from descbal.export import export_model
    from descbal.report import export_report

    result = export_model(model, out, fmt.value, fp16=fp16, opset=opset, overwrite=overwrite,
                          check_patches=check_patches, seed=seed)
    show(export_report(result), quiet)
    emit_json(result.to_json(), json_out)


# ------------------------------------------------------------------------------ download

download_app = App(help="Download Brown/UBC PhotoTour and HPatches from live mirrors, verified and resumable.",
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
    from descbal.console import emit_json, progress_reporter, show
    from descbal.data.download import fetch
    from descbal.data.paths import default_root
    from descbal.report import download_report

    root = root if root is not None else default_root()
    with progress_reporter(quiet, unit="bytes") as progress:
        report = fetch(files, root, extra_mirrors=mirror or (), checksum=checksum, from_file=from_file,
                       keep_archive=keep_archive, progress=progress, timeout=timeout)
    show(download_report(report), quiet)
    emit_json(report.to_json(), json_out)


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

cache_app = App(help="Convert raw datasets into HDF5 patch caches (idempotent, atomic).", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Rebuild even if an up-to-date cache exists.")]


def _report_cache(results: list[Any], json_out: str | None, quiet: bool) -> None:
    from descbal.console import emit_json, show
    from descbal.report import cache_report

    show(cache_report(results), quiet)
    docs = [r.to_json() for r in results]
    emit_json(docs if len(docs) != 1 else docs[0], json_out)


@cache_app.command("brown")
@handle_errors
def cache_brown_cmd(
    names: Annotated[list[str], typer.Argument(help="liberty, notredame, yosemite, *_harris, or all.")],
    root: RootOpt = None, overwrite: OverwriteOpt = False, json_out: JsonOpt = None, quiet: QuietOpt = False,
) -> None:
    """Brown raw folders (ROOT/brown/NAME) into ROOT/brown/NAME.h5 (patches, labels, pairs)."""
    from descbal.console import progress_reporter
    from descbal.data.brown import cache_brown_sets
    from descbal.data.paths import default_root

    root = root if root is not None else default_root()
    with progress_reporter(quiet) as progress:
        results = cache_brown_sets(names, root, overwrite=overwrite, progress=progress)
    _report_cache(results, json_out, quiet)


@cache_app.command("hpatches")
@handle_errors
def cache_hpatches_cmd(
    root: RootOpt = None,
    out: Annotated[Path | None, out_option("Output file (default ROOT/hpatches/hpatches.h5).")] = None,
    overwrite: OverwriteOpt = False, json_out: JsonOpt = None, quiet: QuietOpt = False,
) -> None:
    """The HPatches patches release into one HDF5 file; task files copied beside it."""
    from descbal.console import progress_reporter
    from descbal.data.hpatches_data import cache_hpatches
    from descbal.data.paths import default_root

    root = root if root is not None else default_root()
    with progress_reporter(quiet) as progress:
        result = cache_hpatches(root, out=out, overwrite=overwrite, progress=progress)
    _report_cache([result], json_out, quiet)


@cache_app.command("sequences")
@handle_errors
def cache_sequences_cmd(
    src: Annotated[Path, typer.Argument(help="Folder of sequences (1..6.ppm|png, H_1_2..H_1_6).")],
    out: Annotated[Path, out_option("Output HDF5 file.")],
    overwrite: OverwriteOpt = False, json_out: JsonOpt = None, quiet: QuietOpt = False,
) -> None:
    """Image sequences with homographies into one HDF5 file."""
    from descbal.console import progress_reporter
    from descbal.data.sequences import cache_sequences

    with progress_reporter(quiet) as progress:
        result = cache_sequences(src, out, overwrite=overwrite, progress=progress)
    _report_cache([result], json_out, quiet)


# ------------------------------------------------------------------------------ train


@app.command("train")
@handle_errors
def train_cmd(
    out: Annotated[Path | None, out_option("Run folder (config, logs, checkpoints, model).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML file with the run configuration.")] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="A shipped recipe (see --list-recipes).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: section.key=value (repeatable).")] = None,
    data: Annotated[list[Path] | None, typer.Option("--data", help="Training cache (.h5 with patches, labels); repeatable: "
                                                    "one run on all the sets (of one patch geometry).")] = None,
    val: Annotated[Path | None, typer.Option("--val", help="Validation cache (.h5 with pairs): FPR95 each epoch "
                                             "(default: the training pool's held-out pairs, when it has them).")] = None,
    no_val: Annotated[bool, typer.Option("--no-val", help="No validation (data.val = \"none\").")] = False,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in this folder exactly.")] = None,
    seed: Annotated[int | None, seed_option("Seed of the run (loop.seed; after --set).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto (CUDA when available), cpu or cuda "
                                               "(loop.device; after --set).")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="Compile the training step with torch.compile "
                                           "(loop.compile = true; the network alone for losses that do not trace "
                                           "whole): faster steps after a first slow one; without a C++ compiler "
                                           "the run goes on eager with a warning.")] = False,
    nproc: Annotated[int | None, typer.Option("--nproc", help="Train on N local processes (one per GPU, or CPU "
                                              "processes with gloo): one global batch split over them. Under "
                                              "torchrun, leave it out.")] = None,
    list_recipes: Annotated[bool, typer.Option("--list-recipes", help="Print the shipped recipes and exit.")] = False,
    show_recipe: Annotated[str | None, typer.Option("--show-recipe", help="Print a recipe's TOML (to copy) and exit.")]
    = None,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a descriptor. Precedence: defaults < --recipe < --config < --set < --data/--val/--seed/--device."""
    from descbal.console import emit_json, progress_reporter, show, stderr
    from descbal.recipes import recipe_names, recipe_text
    from descbal.report import train_report, train_start_line
    from descbal.train.trainer import open_run

    if list_recipes:
        for name in recipe_names():
            typer.echo(name)
        return
    if show_recipe is not None:
        typer.echo(recipe_text(show_recipe), nl=False)
        return
    run = {"out": out, "resume": resume, "recipe": recipe, "config": config, "overrides": tuple(set_ or ()),
           "data": data or None, "val": val, "seed": seed, "device": device, "no_val": no_val, "compile": compile}
    if nproc is not None:
        from descbal.train.launch import train_processes

        try:
            summary = train_processes(nproc, run, quiet)
        except KeyboardInterrupt:
            stderr.print(f"interrupted: checkpoint saved; continue with 'descbal train --nproc {nproc} --resume "
                         f"{resume or out}'")
            raise typer.Exit(130) from None
    else:
        trainer = open_run(**run)
        quiet = quiet or not trainer.is_main  # under torchrun, rank 0 speaks for the run
        show([train_start_line(trainer.run_dir, trainer.device, trainer.global_step, trainer.total_steps)], quiet)
        try:
            with progress_reporter(quiet) as progress:
                summary = trainer.fit(progress=progress, log=None if quiet else stderr.print)
        except KeyboardInterrupt:
            if trainer.is_main:
                stderr.print(f"interrupted: checkpoint saved; continue with 'descbal train --resume {trainer.run_dir}'")
            raise typer.Exit(130) from None
        finally:
            from descbal.train import distributed

            distributed.shutdown()  # leaves a torchrun rank's process group (nothing otherwise)
        if not trainer.is_main:
            return
    show(train_report(summary), quiet)
    emit_json(summary.to_json(), json_out)


@cache_app.command("images")
@handle_errors
def cache_images_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder of photos (searched recursively).")],
    out: Annotated[Path, out_option("Output patch pool (.h5, Brown schema + holdout).")],
    detector: DetectorOpt = "sift",
    max_keypoints: Annotated[int, typer.Option(help="Keypoints per photo, strongest first.")] = 300,
    views: Annotated[int, typer.Option(help="Views per keypoint (the photo itself plus random homographies).")] = 4,
    seed: Annotated[int, seed_option()] = 0,
    mag: Annotated[float, typer.Option(help="Patch side = mag x keypoint diameter (pixels).")] = 5.0,
    upright: CutUprightOpt = None,
    holdout: Annotated[float, typer.Option(help="Fraction of photos held out for the FPR95 pairs.")] = 0.1,
    overwrite: OverwriteOpt = False, strict: StrictOpt = False, json_out: JsonOpt = None, quiet: QuietOpt = False,
) -> None:
    """Self-supervised training patches from any photos: keypoints, random homographies,
    photometric changes and detector noise; held-out pairs for FPR95. Unreadable or unusable
    photos are skipped with a warning (exit 1 with --strict)."""
    from descbal.console import emit_json, progress_reporter, show
    from descbal.data.selfsup import PoolConfig, cache_images
    from descbal.errors import BadInputError
    from descbal.geometry import PatchGeometry
    from descbal.report import pool_report

    try:
        cfg = PoolConfig(seed=seed, detector=detector, max_keypoints=max_keypoints, views=views,
                         geometry=PatchGeometry(mag=mag, upright=bool(upright)), holdout_fraction=holdout)
    except ValueError as e:
        raise BadInputError(str(e)) from None
    with progress_reporter(quiet) as progress:
        result = cache_images(folder, out, cfg, overwrite=overwrite, progress=progress)
    show(pool_report(result), quiet)
    emit_json(result.to_json(), json_out)
    _finish_skipped(result, strict, quiet)


@cache_app.command("sfm")
@handle_errors
def cache_sfm_cmd(
    reconstructions: Annotated[list[str], typer.Argument(
        help="COLMAP models (binary or text; a descbal reconstruct output folder is read as its model/), each MODEL "
             "or MODEL=IMAGES; several are merged, each a scene.")],
    out: Annotated[Path, out_option("Output training set (.h5, Brown schema + holdout, near, per-patch sightings).")],
    images: Annotated[Path | None, typer.Option("--images", help="The image folder of the reconstructions given "
                                                "without =IMAGES.")] = None,
    features: Annotated[Path | None, typer.Option("--features", help="The hloc features file the model was built "
                                                  "from (one reconstruction; default: features.h5 beside the model "
                                                  "folder, when present).")] = None,
    min_track: Annotated[int, typer.Option("--min-track", help="Sightings a 3D point needs.")] = 3,
    max_reproj: Annotated[float, typer.Option("--max-reproj", help="Largest reprojection error (px) of a point and "
                                              "of each sighting used.")] = 2.0,
    holdout: Annotated[float, typer.Option(help="Fraction of 3D points held out for the FPR95 pairs.")] = 0.1,
    holdout_scene: Annotated[str | None, typer.Option("--holdout-scene", help="Hold out every point of this scene "
                                                      "instead.")] = None,
    num_pairs: Annotated[int, typer.Option("--num-pairs", help="Held-out verification pairs (half matching).")]
    = 10000,
    mag: Annotated[float, typer.Option(help="Patch side = mag x keypoint diameter (pixels).")] = 5.0,
    upright: CutUprightOpt = None,
    ref_scale: Annotated[float, typer.Option("--ref-scale", help="Without feature scales: the diameter (px) of a "
                                             "point's reference sighting; the others by depth.")] = 12.0,
    near_px: Annotated[float, typer.Option("--near-px", help="3D points this close (px) in an image are near: never "
                                           "negatives of each other.")] = 3.0,
    keep_near: Annotated[bool, typer.Option("--keep-near", help="Write no near table (Brown's behaviour).")] = False,
    max_points: Annotated[int, typer.Option("--max-points", help="At most this many 3D points, a seeded subset "
                                            "(0: all).")] = 0,
    seed: Annotated[int, seed_option()] = 0,
    overwrite: OverwriteOpt = False, strict: StrictOpt = False, json_out: JsonOpt = None, quiet: QuietOpt = False,
) -> None:
    """Brown-style training patches from COLMAP reconstructions: one class per 3D point, one
    patch per sighting; held-out points give the FPR95 pairs. Unreadable images are skipped with
    a warning (exit 1 with --strict)."""
    from descbal.console import emit_json, progress_reporter, show
    from descbal.errors import BadInputError
    from descbal.geometry import PatchGeometry
    from descbal.report import sfm_set_report
    from descbal.sfm.trainset import SfmSetConfig, cache_sfm, sfm_inputs

    try:
        cfg = SfmSetConfig(seed=seed, min_track=min_track, max_reproj=max_reproj, holdout_fraction=holdout,
                           holdout_scene=holdout_scene, pairs=num_pairs,
                           geometry=PatchGeometry(mag=mag, upright=bool(upright)),
                           ref_scale=ref_scale, near_px=near_px, keep_near=keep_near, max_points=max_points)
    except ValueError as e:
        raise BadInputError(str(e)) from None
    inputs = sfm_inputs(reconstructions, images, features)
    with progress_reporter(quiet) as progress:
        result = cache_sfm(inputs, out, cfg, overwrite=overwrite, progress=progress)
    show(sfm_set_report(result), quiet)
    emit_json(result.to_json(), json_out)
    _finish_skipped(result, strict, quiet)


@app.command("make-benchmark")
@handle_errors
def make_benchmark_cmd(
    sequences: Annotated[Path, typer.Argument(help="Sequences with homographies (1..6.ppm|png, H_1_2..H_1_6).")],
    out: Annotated[Path, out_option("Output folder (patches/ in the HPatches layout, tasks/).")],
    detector: DetectorOpt = "sift",
    max_keypoints: Annotated[int, typer.Option(help="Patches per sequence.")] = 1000,
    split: Annotated[str, typer.Option(help="Name of the split covering all sequences.")] = "full",
    seed: Annotated[int, seed_option("Seed of the jitter and the task files.")] = 0,
    strict: StrictOpt = False, json_out: JsonOpt = None, quiet: QuietOpt = False,
) -> None:
    """An HPatches-format patch benchmark (easy/hard/tough jitter, official task files) from image
    sequences with ground-truth homographies; score it with 'descbal eval hpatches'. Unusable
    sequences are skipped with a warning (exit 1 with --strict)."""
    from descbal.console import emit_json, progress_reporter, show
    from descbal.data.make_benchmark import BenchmarkConfig, make_benchmark
    from descbal.report import benchmark_report

    with progress_reporter(quiet) as progress:
        result = make_benchmark(sequences, out, BenchmarkConfig(seed=seed, detector=detector, max_keypoints=max_keypoints,
                                                                    split=split),
                                progress=progress)
    show(benchmark_report(result), quiet)
    emit_json(result.to_json(), json_out)
    _finish_skipped(result, strict, quiet)


@app.command("quickstart")
@handle_errors
def quickstart_cmd(
    out: Annotated[Path, out_option("Working folder (pool, run/ with model.pt, benchmark); a rerun skips what is "
                                    "done.")] = Path("descbal-quickstart"),
    seed: Annotated[int, seed_option()] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="Shrink every stage (a smoke test, under a minute).")] = False,
    json_out: JsonOpt = None, quiet: QuietOpt = False,
) -> None:
    """No download, a few minutes on a CPU: self-supervised pool from photos shipped with
    scikit-image, Self-TNet small training, a benchmark from held-out photos, and a comparison
    of the trained model, the untrained network and SIFT (also on a real stereo pair). A rerun
    skips finished stages and resumes an interrupted training run."""
    from descbal.console import emit_json, progress_reporter, show, stderr
    from descbal.quickstart import run_quickstart
    from descbal.report import quickstart_report

    try:
        with progress_reporter(quiet) as progress:
            result = run_quickstart(out, seed=seed, quick=quick, progress=progress,
                                    log=lambda line: show([line], quiet))
    except KeyboardInterrupt:
        stderr.print(f"interrupted; the same command continues where it stopped (--out {out})")
        raise typer.Exit(130) from None
    show(quickstart_report(result), quiet)
    emit_json(result.to_json(), json_out)


# ------------------------------------------------------------------------------ match


@app.command("match")
@handle_errors
def match_cmd(
    features: Annotated[Path, typer.Argument(help="hloc features file (descbal extract).")],
    pairs: Annotated[Path, typer.Option("--pairs", "-p", help="Text file of image pairs, 'name0 name1' per line.")],
    out: Annotated[Path, out_option("hloc matches file (.h5).")],
    ratio: Annotated[float | None, typer.Option("--ratio", help="Also apply Lowe's ratio test (e.g. 0.8).")] = None,
    device: DeviceOpt = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute pairs already in --out.")] = False,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Mutual-nearest-neighbour matches of image pairs into an hloc matches file."""
    from descbal.console import emit_json, progress_reporter, show
    from descbal.errors import BadInputError
    from descbal.match import match_features
    from descbal.report import match_report

    if ratio is not None and not 0 < ratio <= 1:
        raise BadInputError("--ratio must be in (0, 1]")
    with progress_reporter(quiet) as progress:
        result = match_features(features, pairs, out, ratio=ratio, overwrite=overwrite, device=device,
                                progress=progress)
    show(match_report(result), quiet)
    emit_json(result.to_json(), json_out)


@eval_app.command("sequences")
@handle_errors
def eval_sequences_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder of sequences (<seq>/1..6.ppm|png, H_1_k), e.g. HPatches.")],
    model: Annotated[list[str], model_option(MODEL_HELP + " Repeatable: the models are compared in one table.")],
    sequence: Annotated[list[str] | None, typer.Option("--sequence", help="Only this sequence (repeatable).")] = None,
    detector: DetectorOpt = "sift",
    max_keypoints: MaxKpOpt = 2048,
    ratio: Annotated[float | None, typer.Option("--ratio", help="Also apply Lowe's ratio test.")] = None,
    mag: MagOpt = None,
    size_kind: SizeKindOpt = SizeKind.diameter,
    angle_unit: AngleUnitOpt = AngleUnit.deg,
    angle_sign: AngleSignOpt = 1.0,
    pixel_origin: PixelOriginOpt = PixelOrigin.center,
    upright: UprightOpt = None,
    device: DeviceOpt = "auto",
    plot: Annotated[Path | None, typer.Option("--plot", help="Write MMA against threshold as a PNG.")] = None,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Matching on sequences with homographies: MMA at 1..10 px (D2-Net protocol), matches,
    features and homography accuracy at 1/3/5 px, split by i_/v_ sequences."""
    from descbal.console import emit_json, progress_reporter, show
    from descbal.eval.sequences import evaluate_sequences, plot_mma
    from descbal.report import sequences_report

    geometry = _geometry(mag, size_kind, angle_unit, angle_sign, pixel_origin, upright)
    with progress_reporter(quiet) as progress:
        result = evaluate_sequences(folder, model, detector=detector, max_keypoints=max_keypoints, geometry=geometry,
                                    ratio=ratio, device=device, sequences=sequence, progress=progress)
    if plot is not None:
        plot_mma(result, plot)
    show(sequences_report(result, plot), quiet)
    emit_json(result.to_json(), json_out)


@eval_app.command("stereo")
@handle_errors
def eval_stereo_cmd(
    left: Annotated[Path | None, typer.Argument(help="Left image of a rectified pair.", show_default=False)] = None,
    right: Annotated[Path | None, typer.Argument(help="Right image.", show_default=False)] = None,
    disparity: Annotated[Path | None, typer.Argument(
        help="Left disparity map (x_r = x_l - d): .npy, .npz, .pfm, or .png/.tif (see --disparity-scale); "
             "not finite or <= 0 where unknown.", show_default=False)] = None,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help=MODEL_HELP + " Repeatable.")] = None,
    builtin: Annotated[str | None, typer.Option("--builtin", help="A built-in pair instead of the files: motorcycle "
                                                "(Middlebury 2014, shipped with scikit-image).")] = None,
    disparity_scale: Annotated[float, typer.Option("--disparity-scale", help="Disparity = stored value / this "
                                                   "(KITTI PNGs: 256).")] = 1.0,
    detector: DetectorOpt = "sift",
    max_keypoints: MaxKpOpt = 2048,
    ratio: Annotated[float | None, typer.Option("--ratio", help="Also apply Lowe's ratio test.")] = None,
    mag: MagOpt = None,
    size_kind: SizeKindOpt = SizeKind.diameter,
    angle_unit: AngleUnitOpt = AngleUnit.deg,
    angle_sign: AngleSignOpt = 1.0,
    pixel_origin: PixelOriginOpt = PixelOrigin.center,
    upright: UprightOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Matching on a rectified stereo pair with ground-truth disparity: MMA at 1..10 px (a match
    is correct when the right keypoint lies within t px of the left one shifted by its
    disparity), matches and features per model."""
    from descbal.console import emit_json, progress_reporter, show
    from descbal.eval.stereo import run_stereo
    from descbal.report import stereo_report

    geometry = _geometry(mag, size_kind, angle_unit, angle_sign, pixel_origin, upright)
    with progress_reporter(quiet) as progress:
        result = run_stereo(left, right, disparity, model or (), builtin=builtin, disparity_scale=disparity_scale,
                            detector=detector, max_keypoints=max_keypoints, geometry=geometry, ratio=ratio,
                            device=device, progress=progress)
    show(stereo_report(result), quiet)
    emit_json(result.to_json(), json_out)


# ------------------------------------------------------------------------------ structure from motion (pycolmap)

CameraModelOpt = Annotated[str, typer.Option("--camera-model", help="COLMAP camera model (SIMPLE_RADIAL, SIMPLE_PINHOLE, "
                                             "PINHOLE, RADIAL, OPENCV).")]
IntrinsicsOpt = Annotated[str | None, typer.Option("--intrinsics", help="A 3x3 K file for every image, or a folder of "
                                                   "<image name>.txt / .camera files (pixel centres at integers; "
                                                   "default: EXIF, else 1.2 x the longer side).")]
SingleCameraOpt = Annotated[bool, typer.Option("--single-camera", help="One camera shared by every image.")]
VerboseColmapOpt = Annotated[bool, typer.Option("--colmap-log", help="Show COLMAP's own info log lines.")]


def _reconstruct_config(model: str, detector: str, max_keypoints: int, max_size: int | None, pairs: Path | None,
                        exhaustive_max: int, num_neighbours: int, ratio: float | None, camera_model: str,
                        intrinsics: str | None, single_camera: bool, device: str, mag: float | None = None,
                        upright: bool | None = None) -> Any:
    from descbal.errors import BadInputError
    from descbal.extract.pipeline import ExtractConfig
    from descbal.geometry import geometry_from_options
    from descbal.sfm import CameraOptions, ReconstructConfig

    if ratio is not None and not 0 < ratio <= 1:
        raise BadInputError("--ratio must be in (0, 1]")
    if max_keypoints < 0 or (max_size is not None and max_size < 1):
        raise BadInputError("--max-keypoints must be >= 0 and --max-size >= 1")
    return ReconstructConfig(
        extract=ExtractConfig(model=model, detector=detector, max_keypoints=max_keypoints, device=device,
                              max_size=max_size, geometry=geometry_from_options(mag=mag, upright=upright)),
        pairs=None if pairs is None else str(pairs), exhaustive_max=exhaustive_max, num_neighbours=num_neighbours,
        ratio=ratio, camera=CameraOptions(camera_model, intrinsics, single_camera))


MaxSizeOpt = Annotated[int | None, typer.Option("--max-size", help="Extract on images shrunk to this longer side "
                                                "(keypoints go to COLMAP in full-resolution pixels).")]
PairsFileOpt = Annotated[Path | None, typer.Option("--pairs", "-p", help="Image pairs, 'name0 name1' per line (default: all "
                                                   "pairs up to --exhaustive-max images, else retrieval).")]
ExhaustiveOpt = Annotated[int, typer.Option("--exhaustive-max", help="Match every pair up to this many images.")]
NeighboursOpt = Annotated[int, typer.Option("--num-neighbours", help="Beyond --exhaustive-max: pairs per image, nearest "
                                            "by the mean local descriptor.")]
SfmRatioOpt = Annotated[float | None, typer.Option("--ratio", help="Lowe's ratio on top of mutual nearest neighbours.")]


@app.command("colmap")
@handle_errors
def colmap_cmd(
    features: Annotated[Path, typer.Argument(help="hloc features file (descbal extract).")],
    matches: Annotated[Path, typer.Argument(help="hloc matches file (descbal match).")],
    images: Annotated[Path, typer.Option("--images", help="The image folder the names are relative to.")],
    database: Annotated[Path, typer.Option("--database", help="COLMAP database to create (.db).")],
    camera_model: CameraModelOpt = "SIMPLE_RADIAL",
    intrinsics: IntrinsicsOpt = None,
    single_camera: SingleCameraOpt = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip two-view geometric verification.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing database.")] = False,
    colmap_log: VerboseColmapOpt = False,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Features + matches into a new COLMAP database (keypoints +0.5 px), verified by pycolmap."""
    from descbal.console import emit_json, progress_reporter, show
    from descbal.report import colmap_report
    from descbal.sfm import CameraOptions, write_colmap_database

    with progress_reporter(quiet) as progress:
        result = write_colmap_database(features, matches, images, database,
                                       camera=CameraOptions(camera_model, intrinsics, single_camera), overwrite=overwrite,
                                       verify=not no_verify, progress=progress, verbose=colmap_log)
    show(colmap_report(result), quiet)
    emit_json(result.to_json(), json_out)


@app.command("reconstruct")
@handle_errors
def reconstruct_cmd(
    images: Annotated[Path, typer.Argument(help="Folder of images (searched recursively).")],
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (features, matches, database, model/, "
                                      "summary.json).")],
    detector: DetectorOpt = "sift",
    max_keypoints: MaxKpOpt = 4096,
    max_size: MaxSizeOpt = None,
    mag: MagOpt = None,
    upright: UprightOpt = None,
    pairs: PairsFileOpt = None,
    exhaustive_max: ExhaustiveOpt = 50,
    num_neighbours: NeighboursOpt = 20,
    ratio: SfmRatioOpt = 0.8,
    camera_model: CameraModelOpt = "SIMPLE_RADIAL",
    intrinsics: IntrinsicsOpt = None,
    single_camera: SingleCameraOpt = False,
    device: DeviceOpt = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start afresh instead of resuming.")] = False,
    colmap_log: VerboseColmapOpt = False,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Images -> extract -> pairs -> match -> COLMAP database -> pycolmap incremental mapping. Resumable."""
    from descbal.console import emit_json, progress_reporter, show
    from descbal.report import reconstruct_report
    from descbal.sfm import reconstruct

    cfg = _reconstruct_config(model, detector, max_keypoints, max_size, pairs, exhaustive_max, num_neighbours, ratio,
                              camera_model, intrinsics, single_camera, device, mag, upright)
    with progress_reporter(quiet) as progress:
        result = reconstruct(images, out, cfg, overwrite=overwrite, progress=progress, verbose=colmap_log)
    show(reconstruct_report(result), quiet)
    emit_json(result.to_json(), json_out)
    if result.model is None:
        raise typer.Exit(1)


@eval_app.command("sfm")
@handle_errors
def eval_sfm_cmd(
    scenes: Annotated[list[Path], typer.Argument(help="Scene folders (images/ + gt_dense_cameras/ or a COLMAP model), "
                                                 "or folders of scenes.")],
    model: Annotated[list[str], typer.Option("--model", "-m", help=MODEL_HELP + " Repeatable.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Reconstructions go to OUT/<scene>/<model>/, plots to "
                                      "OUT/<scene>.png.")] = Path("descbal-sfm"),
    detector: DetectorOpt = "sift",
    max_keypoints: MaxKpOpt = 4096,
    max_size: MaxSizeOpt = None,
    mag: MagOpt = None,
    upright: UprightOpt = None,
    exhaustive_max: ExhaustiveOpt = 50,
    num_neighbours: NeighboursOpt = 20,
    ratio: SfmRatioOpt = 0.8,
    camera_model: CameraModelOpt = "SIMPLE_RADIAL",
    intrinsics: IntrinsicsOpt = None,
    single_camera: SingleCameraOpt = False,
    device: DeviceOpt = "auto",
    no_plot: Annotated[bool, typer.Option("--no-plot", help="No PNG per scene.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Reconstruct afresh instead of resuming.")] = False,
    colmap_log: VerboseColmapOpt = False,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Reconstruct scenes with ground-truth cameras with each model; registered images, points,
    camera-centre and rotation errors after a robust similarity alignment, relative-pose accuracy."""
    from descbal.console import emit_json, progress_reporter, show
    from descbal.report import sfm_table
    from descbal.sfm import evaluate_sfm

    cfg = _reconstruct_config("sift", detector, max_keypoints, max_size, None, exhaustive_max, num_neighbours, ratio,
                              camera_model, intrinsics, single_camera, device, mag, upright)
    with progress_reporter(quiet) as progress:
        result = evaluate_sfm(list(scenes), model, out, cfg, plot=not no_plot, overwrite=overwrite, progress=progress,
                              verbose=colmap_log)
    show(sfm_table(result), quiet)
    emit_json(result.to_json(), json_out)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

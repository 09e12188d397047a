"""Command-line interface: parses arguments and calls the library; nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from urbansound.config import (
    DEFAULT_RECIPE,
    RECIPE_ALIASES,
    RECIPES,
    AudioConfig,
    FeatureConfig,
    RunConfig,
    TrainingConfig,
    apply_recipe,
    normalise_feature_kind,
    scaled_peak_lr,
)
from urbansound.errors import ConfigError, UrbanSoundError
from urbansound.settings import (
    add_setting_arguments,
    apply_setting_arguments,
    dump_config,
    load_config_file,
)

CLASS_EXAMPLES = "class_examples.png"  # the demo's waveform / spectrogram plot of one clip per class

logger = logging.getLogger("urbansound")

# Help titles of the setting sections (top-level fields name their own group).
SECTION_TITLES = {
    "audio": "audio and features",
    "features": "audio and features",
    "model": "model and training (unset flags come from --recipe or --config)",
    "training": "model and training (unset flags come from --recipe or --config)",
    "split": "split",
    "augment": "augmentation (training only; unset flags come from --recipe or --config)",
}


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _recipe_name(text: str) -> str:
    name = RECIPE_ALIASES.get(text, text)
    if name not in RECIPES:
        raise argparse.ArgumentTypeError(
            f"unknown recipe {text!r}; choose one of {', '.join(RECIPES)} (or {', '.join(RECIPE_ALIASES)})"
        )
    return name


def add_starting_point_arguments(parser: argparse.ArgumentParser, config_file: bool) -> None:
    """--recipe (and, for train and crossval, --config and --print-config): where the settings start."""
    group = parser.add_argument_group("starting point (any setting flag given overrides it)")
    group.add_argument(
        "--recipe",
        type=_recipe_name,
        default=argparse.SUPPRESS,
        metavar="{" + ",".join(RECIPES) + "}",
        help="named settings to start from: 'default' (the measured best; the default unless --config) or "
        "'baseline' (the student project's settings; alias: seed)",
    )
    if not config_file:
        return
    group.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="start from a saved configuration: a run's config.json, a crossval.json, or YAML (with PyYAML)",
    )
    group.add_argument(
        "--print-config",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="write the resolved configuration (JSON to stdout, or to FILE; YAML if FILE ends in .yaml) "
        "and exit without training",
    )


def add_settings(
    parser: argparse.ArgumentParser,
    include: Callable[[str], bool] | None = None,
    required: Sequence[str] = (),
) -> dict[str, argparse._ArgumentGroup]:
    """The setting flags declared in ``urbansound.config``, with the default recipe's values in --help."""
    defaults = apply_recipe(RunConfig(), DEFAULT_RECIPE)
    return add_setting_arguments(
        parser, RunConfig, defaults, include=include, required=required, titles=SECTION_TITLES
    )


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """The base configuration (``--config`` FILE, else ``--recipe``, else the default recipe; a recipe
    given with ``--config`` replaces the file's recipe settings), then every setting flag given."""
    config_file = getattr(args, "config", None)
    recipe = getattr(args, "recipe", None)
    if config_file is not None:
        config = load_config_file(config_file)
        if recipe is not None:
            apply_recipe(config, recipe)
    else:
        config = apply_recipe(RunConfig(), recipe or DEFAULT_RECIPE)
    base_model = config.model.name
    base_batch, base_lr = config.training.batch_size, config.training.max_lr
    if getattr(args, "model.name", base_model) != base_model:
        config.model.kwargs = {}  # the base's model options belong to the base's model
    given = apply_setting_arguments(config, args)
    if "training.max_lr" not in given:  # an explicit rate is never scaled
        config.training.max_lr = scaled_peak_lr(base_lr, base_batch, config.training.batch_size)
    config.features.kind = normalise_feature_kind(config.features.kind)  # a file may use an alias
    return config


def run_config_from_args(args: argparse.Namespace, require_data: bool = True) -> RunConfig:
    """The run configuration of train and crossval: ``resolve_config``, checked once."""
    config = resolve_config(args)
    if require_data and (
        not config.data_dir or (not config.annotations and config.layout not in ("auto", "folders"))
    ):
        raise ConfigError("--annotations and --data are required (or --config FILE, or --resume RUN_FOLDER)")
    config.validate()
    return config


def feature_configs(args: argparse.Namespace) -> tuple[AudioConfig, FeatureConfig]:
    """Audio and feature settings of commands that only compute features (models, visualize)."""
    config = resolve_config(args)
    config.audio.validate()
    config.features.validate(config.audio.sample_rate)
    return config.audio, config.features


def _features_only(path: str) -> bool:
    return path.startswith(("audio.", "features."))


def _not_split(path: str) -> bool:
    # Cross-validation chooses the test fold itself; of the split settings only the validation share applies.
    return not path.startswith("split.") or path == "split.val_fraction"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_starting_point_arguments(parser, config_file=True)
    groups = add_settings(parser)
    group = groups["run"]
    group.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_FOLDER",
        help="continue an interrupted run from its last completed epoch",
    )
    group.add_argument(
        "--dry-run", action="store_true", help="validate data and print split sizes, decode nothing"
    )


def cmd_train(args: argparse.Namespace) -> int:
    from urbansound.training.distributed import is_main_process
    from urbansound.training.run import dry_run, resume, train

    if args.resume is not None:
        run_dir = resume(Path(args.resume), progress=not args.quiet)
    else:
        config = run_config_from_args(args, require_data=args.print_config is None)
        if args.print_config is not None:
            dump_config(config, args.print_config)
            return 0
        from urbansound.models import create_model

        create_model(
            config.model.name, n_classes=2, n_bands=config.features.n_mels
        )  # fail fast on a bad name
        if args.dry_run:
            index, split = dry_run(config)
            print(
                f"{len(index.records)} clips, {len(index.class_names)} classes, folds {index.folds}; "
                f"{len(index.skipped)} skipped"
            )
            print(
                f"{split.description}: train {len(split.train)}, val {len(split.val)}, test {len(split.test)}"
            )
            return 0
        run_dir = train(config, progress=not args.quiet)
    if is_main_process():
        print(f"run folder: {run_dir}")
        print(f"report: {run_dir / 'report.md'}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from urbansound.data.synth import synthesize_dataset

    root = synthesize_dataset(
        Path(args.dest),
        recordings_per_class=args.recordings_per_class,
        clips_per_recording=args.clips_per_recording,
        seed=args.seed,
        vary_formats=not args.uniform,
    )
    print(f"synthetic dataset: {root}")
    print(f"  --annotations {root / 'metadata' / 'UrbanSound8K.csv'} --data {root / 'audio'}")
    return 0


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dest", help="folder to write UrbanSound8K/ into")
    parser.add_argument("--recordings-per-class", type=int, default=10)
    parser.add_argument("--clips-per-recording", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--uniform", action="store_true", help="22.05 kHz mono 16-bit 4 s clips only")


def cmd_visualize(args: argparse.Namespace) -> int:
    from urbansound.evaluation.examples import draw_class_examples

    audio, features = feature_configs(args)
    path = draw_class_examples(args.annotations, args.data_dir, Path(args.out), audio, features)
    print(f"class examples: {path}")
    return 0


def add_visualize_arguments(parser: argparse.ArgumentParser) -> None:
    add_starting_point_arguments(parser, config_file=False)
    add_settings(
        parser,
        include=lambda path: _features_only(path) or path in ("annotations", "data_dir"),
        required=("annotations", "data_dir"),
    )
    parser.add_argument("--out", default=f"runs/{CLASS_EXAMPLES}", help="PNG to write")


def cmd_demo(args: argparse.Namespace) -> int:
    from urbansound.data.synth import synthesize_dataset
    from urbansound.training.run import train

    root = Path(args.out) / "UrbanSound8K"
    if not (root / "metadata" / "UrbanSound8K.csv").is_file():
        root = synthesize_dataset(Path(args.out), recordings_per_class=20, clips_per_recording=3, seed=0)
    config = RunConfig(
        annotations=str(root / "metadata" / "UrbanSound8K.csv"),
        data_dir=str(root / "audio"),
        training=TrainingConfig(epochs=args.epochs),
        name="demo",
        runs_dir=args.runs_dir,
    )
    run_dir = train(config, progress=not args.quiet)
    from urbansound.evaluation.examples import draw_class_examples

    draw_class_examples(
        config.annotations, config.data_dir, run_dir / CLASS_EXAMPLES, config.audio, config.features
    )
    print(f"demo run folder: {run_dir}")
    from urbansound.training.run_folder import RunFolder

    for name in (
        RunFolder.REPORT,
        RunFolder.METRICS,
        RunFolder.HISTORY_PLOT,
        RunFolder.CONFUSION_PLOT,
        CLASS_EXAMPLES,
        RunFolder.MODEL,
    ):
        print(f"  {run_dir / name}")
    return 0


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_data", help="where the synthetic dataset is written")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--runs-dir", default="runs")


def cmd_models(args: argparse.Namespace) -> int:
    from urbansound.models import create_model, list_models
    from urbansound.models.complexity import count_macs, count_parameters

    audio, features = feature_configs(args)
    frames = 1 + audio.n_samples // features.hop_length
    print(f"per {audio.duration:g} s clip: {features.n_mels} bands x {frames} frames")
    print(f"{'model':12s} {'parameters':>12s} {'MACs':>10s}")
    for name in list_models():
        model = create_model(name, n_classes=10, n_bands=features.n_mels)
        macs = count_macs(model, (1, 1, features.n_mels, frames))
        print(f"{name:12s} {count_parameters(model):>12,d} {macs / 1e6:>9,.0f}M")
    return 0


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (model.safetensors of a run folder)")
    parser.add_argument(
        "inputs", nargs="+", metavar="FILE_OR_FOLDER", help="audio files; folders recursively"
    )
    parser.add_argument("--format", choices=("text", "json", "csv"), default="text", help="output format")
    parser.add_argument("--top-k", type=int, default=3, help="classes listed per file and window")
    parser.add_argument(
        "--hop", type=float, default=None, help="seconds between window starts (default: half a window)"
    )
    parser.add_argument("--timeline", action="store_true", help="text format: one line per window too")
    parser.add_argument("--output", "-o", default=None, help="write here (atomically) instead of stdout")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="decoding worker processes")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps")


def cmd_predict(args: argparse.Namespace) -> int:
    from urbansound.inference import Predictor
    from urbansound.prediction_output import collect_inputs, write_predictions

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    predictor = Predictor.from_file(args.model, device=args.device)
    paths = collect_inputs(args.inputs)
    if not paths:
        raise ConfigError(f"no audio files found in {', '.join(args.inputs)}")
    results = predictor.predict_files(
        paths, batch_size=args.batch_size, num_workers=args.workers, progress=not args.quiet, hop=args.hop
    )
    failed = write_predictions(results, args.format, args.top_k, args.output, timeline=args.timeline)
    for result in failed:
        print(f"urbansound: failed: {result.error}", file=sys.stderr)
    if failed:
        print(f"urbansound: {len(failed)} of {len(paths)} file(s) could not be classified", file=sys.stderr)
    return 1 if failed else 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (model.safetensors of a run folder)")
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    parser.add_argument(
        "--output", "-o", default=None, help="default: beside the model, model.audio.onnx / .torchscript.pt"
    )
    parser.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")


def cmd_export(args: argparse.Namespace) -> int:
    from urbansound.export import export_model

    result = export_model(args.model, args.format, args.output, check=not args.no_check)
    print(f"{result.format} model: {result.path}")
    print(
        f"  input: {result.input} (mono float32 waveforms, batch x samples, at {result.sample_rate} Hz; "
        f"windows of {result.window_samples} samples); outputs: logits, probabilities"
    )
    if result.max_abs_diff_probabilities is not None:
        print(f"  parity with PyTorch: max |probability difference| {result.max_abs_diff_probabilities:.1e}")
    return 0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (model.safetensors of a run folder)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (loopback by default)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-upload-mb", type=float, default=50.0, help="largest accepted upload (MiB)")
    parser.add_argument("--max-duration", type=float, default=600.0, help="longest accepted recording (s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps")


def cmd_serve(args: argparse.Namespace) -> int:
    from urbansound.serve import serve

    if args.max_upload_mb <= 0 or args.max_duration <= 0:
        raise ConfigError("--max-upload-mb and --max-duration must be positive")
    serve(
        args.model,
        host=args.host,
        port=args.port,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_duration_s=args.max_duration,
        device=args.device,
    )
    return 0


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    add_starting_point_arguments(parser, config_file=False)
    add_settings(parser, include=_features_only)


def cmd_crossval(args: argparse.Namespace) -> int:
    from urbansound.training.crossval import crossval

    if args.resume is not None:
        out_dir = crossval(
            RunConfig(), folds=args.folds, out_dir=args.resume, resume=True, progress=not args.quiet
        )
    else:
        config = run_config_from_args(args, require_data=args.print_config is None)
        if args.print_config is not None:
            dump_config(config, args.print_config)
            return 0
        out_dir = crossval(
            config, folds=args.folds, out_dir=Path(args.out) if args.out else None, progress=not args.quiet
        )
    from urbansound.training.run_folder import RunFolder

    print((out_dir / RunFolder.CROSSVAL_REPORT).read_text())
    print(f"cross-validation folder: {out_dir}")
    return 0


def add_crossval_arguments(parser: argparse.ArgumentParser) -> None:
    add_starting_point_arguments(parser, config_file=True)
    groups = add_settings(parser, include=_not_split)
    groups["split"].add_argument(
        "--folds", type=_int_list, default=None, help="test folds to run, e.g. 1,2 (default: all)"
    )
    group = groups["run"]
    group.add_argument("--out", default=None, help="cross-validation folder (default: new under --runs-dir)")
    group.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="CROSSVAL_FOLDER",
        help="continue an interrupted cross-validation at its first unfinished fold",
    )


def cmd_compare(args: argparse.Namespace) -> int:
    from urbansound.training.crossval import compare_runs

    text = compare_runs([Path(p) for p in args.runs])
    if args.out:
        from urbansound.io_utils import atomic_write_text

        atomic_write_text(Path(args.out), text)
    print(text)
    return 0


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run or cross-validation folders")
    parser.add_argument("--out", default=None, help="also write the comparison to this Markdown file")


Command = tuple[
    str, str, Callable[[argparse.ArgumentParser], None] | None, Callable[[argparse.Namespace], int]
]
COMMANDS: list[Command] = [
    ("train", "train a classifier (the student project's train.py)", add_train_arguments, cmd_train),
    ("visualize", "plot a waveform and spectrograms per class", add_visualize_arguments, cmd_visualize),
    ("synth", "write a synthetic dataset in the UrbanSound8K layout", add_synth_arguments, cmd_synth),
    ("demo", "synthesise demo data, train, evaluate, write the report", add_demo_arguments, cmd_demo),
    ("models", "list registered models with parameters and MACs per clip", add_models_arguments, cmd_models),
    ("crossval", "cross-validate over the dataset's folds", add_crossval_arguments, cmd_crossval),
    ("compare", "put runs or cross-validations side by side", add_compare_arguments, cmd_compare),
    ("predict", "classify recordings with a trained model", add_predict_arguments, cmd_predict),
    ("export", "export a model file to ONNX or TorchScript", add_export_arguments, cmd_export),
    ("serve", "serve a model over HTTP (with a web page)", add_serve_arguments, cmd_serve),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="urbansound", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, handler in COMMANDS:
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
        )
        if add_arguments is not None:
            add_arguments(sub)
        sub.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under torchrun every process runs this; rank 0 alone reports progress, the others only problems.
    quiet_rank = os.environ.get("RANK", "0") != "0"
    if quiet_rank:
        args.quiet = True
    logging.basicConfig(
        level=logging.WARNING if quiet_rank else logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.handler(args)
    except UrbanSoundError as error:
        print(f"urbansound: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "urbansound: interrupted. Completed epochs are checkpointed: continue with "
            "`urbansound train --resume RUN_FOLDER` (the run folder is logged above).",
            file=sys.stderr,
        )
        return 130

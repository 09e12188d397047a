"""Command-line interface: parses arguments and calls the library; nothing else lives here."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from urbansound.config import (
    DEFAULT_RECIPE,
    RECIPE_ALIASES,
    RECIPES,
    AudioConfig,
    EventConfig,
    FeatureConfig,
    RejectConfig,
    RunConfig,
    TrainingConfig,
    apply_recipe,
    normalise_feature_kind,
    scaled_peak_lr,
    use_backbone_front_end,
)
from urbansound.errors import ConfigError, UrbanSoundError
from urbansound.host_memory import keep_freed_host_memory
from urbansound.settings import (
    add_setting_arguments,
    apply_setting_arguments,
    dump_config,
    load_config_file,
    setting_fields,
)

# What the top-level --help says after the package's one-line description.
TOOL_SUMMARY = (
    "It trains and cross-validates models on a dataset's folds (UrbanSound8K, ESC-50 or a folder per class), "
    "compares runs, classifies or embeds recordings of any length, and exports or serves trained models."
)
CLASS_EXAMPLES = "class_examples.png"  # the demo's waveform / spectrogram plot of one clip per class
# The MODEL argument of predict, embed, export and serve (resolved by training.run_folder.resolve_model_file).
MODEL_HELP = (
    "model file, or a run folder (its model.safetensors), or a cross-validation folder (the fold with the "
    "highest validation accuracy)"
)

if TYPE_CHECKING:  # the inference stack loads torch: only commands that need it import it
    from urbansound.inference import Predictor

logger = logging.getLogger("urbansound")

# Help titles of the setting sections (top-level fields name their own group).
SECTION_TITLES = {
    "audio": "audio and features",
    "features": "audio and features",
    "model": "model and training (unset flags come from --recipe or --config)",
    "training": "model and training (unset flags come from --recipe or --config)",
    "split": "split",
    "augment": "augmentation (training only; unset flags come from --recipe or --config)",
    "reject": "silence, too-short input and unknown sounds (stored in the model file)",
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
        "'baseline' (a 4-block CNN on 64-band log-mel at 44.1 kHz, as tutorials train it; alias: seed)",
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
    """The setting flags declared in ``urbansound.config``; --help shows the default recipe's value of each
    and, where another recipe sets it otherwise, that recipe's too."""
    defaults = apply_recipe(RunConfig(), DEFAULT_RECIPE)
    others = {f"{name} recipe": apply_recipe(RunConfig(), name) for name in RECIPES if name != DEFAULT_RECIPE}
    return add_setting_arguments(
        parser,
        RunConfig,
        defaults,
        include=include,
        required=required,
        titles=SECTION_TITLES,
        alternatives=others,
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
    # A pretrained backbone takes its own sample rate and front end (and a Hugging Face checkpoint's options).
    use_backbone_front_end(config, sorted(given))
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
        help="continue an interrupted run from its last completed epoch (a finished run is left as it is)",
    )
    group.add_argument(
        "--reevaluate",
        action="store_true",
        help="with --resume on a finished run: score its kept weights again and rewrite its results",
    )
    group.add_argument(
        "--dry-run", action="store_true", help="validate data and print split sizes, decode nothing"
    )


def cmd_train(args: argparse.Namespace) -> int:
    from urbansound.training.distributed import is_main_process
    from urbansound.training.run import dry_run, resume, train

    if args.reevaluate and args.resume is None:
        raise ConfigError("--reevaluate applies to a finished run: give it with --resume RUN_FOLDER")
    if args.resume is not None:
        run_dir = resume(Path(args.resume), progress=not args.quiet, reevaluate=args.reevaluate)
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
    parser.add_argument("--recordings-per-class", type=int, default=10, help="recordings (fsIDs) per class")
    parser.add_argument("--clips-per-recording", type=int, default=3, help="slices cut from each recording")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthesis")
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
    parser.add_argument("--epochs", type=int, default=20, help="passes over the training set")
    parser.add_argument("--runs-dir", default="runs", help="folder that holds the run folders")


def cmd_models(args: argparse.Namespace) -> int:
    from urbansound.models.complexity import render_model_costs

    config = resolve_config(args)
    config.audio.validate()
    config.features.validate(config.audio.sample_rate)
    print(render_model_costs(config.audio, config.features, config.model, config.recipe))
    return 0


def add_reject_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``RejectConfig`` (silence floor, shortest input, confidence floor); unset ones keep the
    model file's values."""
    title = "silence, too-short input and unknown sounds (unset: the model file's values)"
    add_setting_arguments(parser, RejectConfig, RejectConfig(), titles={"": title})


def reject_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``RejectConfig`` fields given on the command line (they replace the model file's)."""
    return {path: getattr(args, path) for path, _, _ in setting_fields(RejectConfig) if hasattr(args, path)}


def apply_reject_arguments(reject: RejectConfig, args: argparse.Namespace) -> None:
    """Write the ``RejectConfig`` flags given into ``reject`` (a predictor's copy of the model file's)."""
    apply_setting_arguments(reject, args)
    reject.validate()


def add_event_arguments(parser: argparse.ArgumentParser) -> None:
    """``--events`` and the flags of ``EventConfig``."""
    group = add_setting_arguments(parser, EventConfig, EventConfig(), titles={"": "sound events"})
    group["sound events"].add_argument(
        "--events",
        action="store_true",
        help="also list sound events (class, onset, offset, peak probability; a smaller --hop places "
        "them more finely); --format tsv writes them alone in DCASE's tab-separated format",
    )


def event_config(args: argparse.Namespace) -> EventConfig | None:
    """The event settings when events were asked for (``--events`` or ``--format tsv``), else None."""
    if not (args.events or args.format == "tsv"):
        return None
    config = EventConfig()
    apply_setting_arguments(config, args)
    config.validate()
    return config


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument(
        "inputs", nargs="+", metavar="FILE_OR_FOLDER", help="audio files; folders recursively"
    )
    parser.add_argument(
        "--format", choices=("text", "json", "csv", "tsv"), default="text", help="output format"
    )
    parser.add_argument("--top-k", type=int, default=3, help="classes listed per file and window")
    parser.add_argument(
        "--hop", type=float, default=None, help="seconds between window starts (default: half a window)"
    )
    parser.add_argument("--timeline", action="store_true", help="text format: one line per window too")
    parser.add_argument("--output", "-o", default=None, help="write here (atomically) instead of stdout")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="decoding worker processes")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    add_reject_arguments(parser)
    add_event_arguments(parser)


def cmd_predict(args: argparse.Namespace) -> int:
    from urbansound.inference import Predictor
    from urbansound.prediction_output import collect_inputs, write_predictions

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    predictor = Predictor.from_file(args.model, device=args.device)
    apply_reject_arguments(predictor.reject, args)
    events = event_config(args)
    paths = collect_inputs(args.inputs)
    if not paths:
        raise ConfigError(f"no audio files found in {', '.join(args.inputs)}")
    results = predictor.predict_files(
        paths, batch_size=args.batch_size, num_workers=args.workers, progress=not args.quiet, hop=args.hop
    )
    failed = write_predictions(
        results, args.format, args.top_k, args.output, timeline=args.timeline, events=events
    )
    # Text, CSV and JSON give a failed file's reason in place of its prediction; stderr repeats the reasons
    # only when that output is not on the screen (a file) or has no place for them (tsv), so each shows once.
    if args.output is not None or args.format == "tsv":
        for result in failed:
            print(f"urbansound: failed: {result.error}", file=sys.stderr)
    if failed:
        print(f"urbansound: {len(failed)} of {len(paths)} file(s) could not be classified", file=sys.stderr)
    return 1 if failed else 0


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument(
        "inputs", nargs="+", metavar="FILE_OR_FOLDER", help="audio files; folders recursively"
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="X.npy: one row per file, in the order the files are listed (folders: sorted); X.csv: a file "
        "column, then one column per dimension (written atomically)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps")


def cmd_embed(args: argparse.Namespace) -> int:
    from urbansound.api import Classifier
    from urbansound.embedding_output import check_embedding_path, write_embeddings
    from urbansound.prediction_output import collect_inputs

    out = check_embedding_path(args.out)
    paths = collect_inputs(args.inputs)
    if not paths:
        raise ConfigError(f"no audio files found in {', '.join(args.inputs)}")
    classifier = Classifier.from_file(args.model, device=args.device)
    embeddings = classifier.embed(paths, batch_size=args.batch_size)  # (files, dim)
    write_embeddings(out, paths, embeddings)
    print(f"embeddings: {out} ({embeddings.shape[0]} file(s) x {embeddings.shape[1]} dimensions)")
    return 0


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("info", "clear"),
        help="info: where the feature cache is and its size per settings; clear: remove what it holds",
    )
    add_settings(parser, include=lambda path: path in ("data_dir", "cache_dir"))
    parser.add_argument(
        "--settings",
        default=None,
        metavar="FOLDER",
        help="clear only this settings folder (as `cache info` names it)",
    )


def cmd_cache(args: argparse.Namespace) -> int:
    from urbansound.features.cache_info import cache_root, cache_usage, clear_cache, render_cache_info
    from urbansound.io_utils import format_bytes

    root = cache_root(getattr(args, "data_dir", None), getattr(args, "cache_dir", None))
    if args.action == "info":
        print(render_cache_info(root, cache_usage(root)), end="")
        return 0
    removed, freed = clear_cache(root, args.settings)
    print(f"feature cache {root}: removed {removed} settings folder(s), {format_bytes(freed)} freed")
    return 0


def add_listen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (model.safetensors of a run folder)")
    parser.add_argument(
        "--input",
        default=None,
        metavar="FILE_OR_FIFO",
        help="classify this audio file or FIFO (e.g. WAV written by another program) instead of the "
        "default microphone",
    )
    parser.add_argument(
        "--hop", type=float, default=None, help="seconds between results (default: half a window)"
    )
    parser.add_argument(
        "--realtime", action="store_true", help="--input file: pace it at its own speed, as a live source"
    )
    parser.add_argument("--format", choices=("text", "json"), default="text", help="one line per hop")
    parser.add_argument("--top-k", type=int, default=3, help="classes in each json line")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    add_threads_argument(parser)
    add_reject_arguments(parser)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads`` of ``listen`` and ``serve``: torch's intra-op CPU threads while the command runs."""
    # One window per hop is too little work to share: on 2 busy cores, 2 threads gave a median hop latency
    # of 173 ms against 25 ms for 1 (benchmarks/RESULTS.md), and 786 ms against 13 ms for a served /stream
    # hop (and 2.1 s against 0.3 s for a 60 s upload) while another job trained.
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for the model; more can speed up long recordings on idle cores, but slow each "
        "live hop when the cores are busy (default: 1)",
    )


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the body with torch's intra-op thread count set to ``threads``, then restore it (``main()`` may be
    called again in this process: tests, scripts)."""
    import torch

    if threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)


def cmd_listen(args: argparse.Namespace) -> int:
    from urbansound.inference import Predictor

    with torch_threads(args.threads):
        return _listen(args, Predictor.from_file(args.model, device=args.device))


def _listen(args: argparse.Namespace, predictor: Predictor) -> int:
    import json

    from urbansound.live import LiveClassifier, file_chunks, microphone_chunks

    apply_reject_arguments(predictor.reject, args)
    live = LiveClassifier(predictor, hop=args.hop, top_k=args.top_k)
    if args.input is not None:
        chunks = file_chunks(args.input, predictor.sample_rate, realtime=args.realtime)
    else:
        chunks = microphone_chunks(predictor.sample_rate)
    logger.info(
        "listening to %s: %g s windows every %g s (first result after one window)",
        args.input or "the default microphone",
        predictor.window_s,
        live.hop_s,
    )
    for chunk in chunks:
        for result in live.push(chunk):
            print(json.dumps(result.to_dict()) if args.format == "json" else result.text(), flush=True)
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="what to export to")
    parser.add_argument(
        "--output", "-o", default=None, help="default: beside the model, model.audio.onnx / .torchscript.pt"
    )
    parser.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")


def cmd_export(args: argparse.Namespace) -> int:
    from urbansound.export import OUTPUT_NAMES, export_model

    result = export_model(args.model, args.format, args.output, check=not args.no_check)
    print(f"{result.format} model: {result.path}")
    print(
        f"  input: {result.input} (mono float32 waveforms, batch x samples, at {result.sample_rate} Hz; "
        f"windows of {result.window_samples} samples); outputs: {', '.join(OUTPUT_NAMES)}"
    )
    if result.max_abs_diff_probabilities is not None:
        print(f"  parity with PyTorch: max |probability difference| {result.max_abs_diff_probabilities:.1e}")
    return 0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (loopback by default)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    parser.add_argument("--max-upload-mb", type=float, default=50.0, help="largest accepted upload (MiB)")
    parser.add_argument("--max-duration", type=float, default=600.0, help="longest accepted recording (s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    parser.add_argument(
        "--examples",
        default=None,
        metavar="DIR",
        help="offer the audio files in DIR (up to 12, by name) as examples the page classifies in one click",
    )
    add_threads_argument(parser)
    add_reject_arguments(parser)


def cmd_serve(args: argparse.Namespace) -> int:
    from urbansound.serve import serve

    if args.max_upload_mb <= 0 or args.max_duration <= 0:
        raise ConfigError("--max-upload-mb and --max-duration must be positive")
    with torch_threads(args.threads):  # the process's setting: uploads and /stream hops alike
        serve(
            args.model,
            host=args.host,
            port=args.port,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            max_duration_s=args.max_duration,
            device=args.device,
            reject=reject_overrides(args),
            examples_dir=args.examples,
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


def add_distill_arguments(parser: argparse.ArgumentParser) -> None:
    from urbansound.config import DistillConfig

    parser.add_argument("run", type=Path, metavar="RUN", help="finished run folder; its model teaches")
    parser.add_argument("--model", required=True, metavar="NAME", help="the student's registered model name")
    add_setting_arguments(parser, DistillConfig, DistillConfig(), titles={"": "distillation"})


def cmd_distill(args: argparse.Namespace) -> int:
    from urbansound.config import DistillConfig
    from urbansound.models import create_model
    from urbansound.training.distill import distill

    settings = DistillConfig()
    apply_setting_arguments(settings, args)
    create_model(args.model, n_classes=2, n_bands=8)  # fail fast on a bad name
    run_dir = distill(args.run, args.model, settings, progress=not args.quiet)
    print(f"run folder: {run_dir}")
    return 0


Command = tuple[
    str, str, Callable[[argparse.ArgumentParser], None] | None, Callable[[argparse.Namespace], int]
]
COMMANDS: list[Command] = [
    ("train", "train a classifier on a dataset's folds and test it once", add_train_arguments, cmd_train),
    ("visualize", "plot a waveform and spectrograms per class", add_visualize_arguments, cmd_visualize),
    ("synth", "write a synthetic dataset in the UrbanSound8K layout", add_synth_arguments, cmd_synth),
    ("demo", "synthesise demo data, train, evaluate, write the report", add_demo_arguments, cmd_demo),
    ("models", "list registered models with parameters and MACs per clip", add_models_arguments, cmd_models),
    ("crossval", "cross-validate over the dataset's folds", add_crossval_arguments, cmd_crossval),
    ("compare", "put runs or cross-validations side by side", add_compare_arguments, cmd_compare),
    ("distill", "train one model on a run's soft labels", add_distill_arguments, cmd_distill),
    ("predict", "classify recordings with a trained model", add_predict_arguments, cmd_predict),
    ("embed", "write recordings' penultimate-layer embeddings (.npy, .csv)", add_embed_arguments, cmd_embed),
    ("export", "export a model file to ONNX or TorchScript", add_export_arguments, cmd_export),
    ("serve", "serve a model over HTTP (with a web page)", add_serve_arguments, cmd_serve),
    ("listen", "classify the microphone or a FIFO live, one line per hop", add_listen_arguments, cmd_listen),
    ("cache", "show where the feature cache is and how big, or clear it", add_cache_arguments, cmd_cache),
]


class _HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help, unless the help already says it or there is none to say
    (None, False, or a setting flag's suppressed default, whose help shows the recipe's value)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text
            or any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS))
            or not action.option_strings
        ):
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    import urbansound

    parser = argparse.ArgumentParser(
        prog="urbansound",
        description=f"{urbansound.__doc__} {TOOL_SUMMARY}",
        epilog="`urbansound COMMAND --help` lists a command's options with their defaults.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {urbansound.__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, handler in COMMANDS:
        sub = subparsers.add_parser(
            name, help=help_text, description=help_text, formatter_class=_HelpFormatter
        )
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
    # The command line is a whole process of ours: let malloc keep freed memory for reuse (CPU training took a
    # quarter less time without re-faulting its activations' pages; see keep_freed_host_memory).
    keep_freed_host_memory()
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

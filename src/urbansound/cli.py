"""Command-line interface: parses arguments and calls the library; nothing else lives here."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from urbansound.config import (
    DATA_ON_DEVICE,
    DB_REFERENCES,
    MIXUP_DOMAINS,
    RECIPES,
    SCHEDULERS,
    SELECT_EPOCH,
    AudioConfig,
    FeatureConfig,
    RunConfig,
    SplitConfig,
    TrainingConfig,
    apply_recipe,
    normalise_feature_kind,
    scaled_peak_lr,
)
from urbansound.data.datasets import LAYOUTS
from urbansound.errors import ConfigError, UrbanSoundError

logger = logging.getLogger("urbansound")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--annotations", required=required, help="UrbanSound8K.csv or ESC-50's esc50.csv (none: folders)"
    )
    group.add_argument(
        "--data",
        required=required,
        help="audio folder: fold1..fold10 (UrbanSound8K), ESC-50's audio/, or one subfolder per class",
    )
    group.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="dataset layout (auto: from the annotations' columns; no --annotations: folder per class)",
    )
    group.add_argument(
        "--skip-bad",
        "--skip_bad",
        action="store_true",
        help="skip clips with bad metadata or undecodable audio (listed in the run folder)",
    )


def add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    audio, features = AudioConfig(), FeatureConfig()
    group = parser.add_argument_group("audio and features")
    group.add_argument(
        "--trans-type",
        "--trans_type",
        dest="trans_type",
        default=features.kind,
        help="mel_spec (log-mel) or gammatone (alias: gamma)",
    )
    group.add_argument("--sample-rate", type=int, default=audio.sample_rate, help="Hz")
    group.add_argument(
        "--duration", type=float, default=audio.duration, help="seconds per clip (cut or padded)"
    )
    group.add_argument("--n-fft", type=int, default=features.n_fft)
    group.add_argument("--hop-length", type=int, default=features.hop_length)
    group.add_argument(
        "--n-mels",
        "--n-bands",
        dest="n_mels",
        type=int,
        default=features.n_mels,
        help="number of mel or gammatone bands",
    )
    group.add_argument("--f-min", type=float, default=features.f_min, help="Hz")
    group.add_argument("--f-max", type=float, default=features.f_max, help="Hz (default: Nyquist)")
    group.add_argument("--top-db", type=float, default=features.top_db)
    group.add_argument(
        "--db-reference",
        choices=DB_REFERENCES,
        default=features.db_reference,
        help="absolute: dB re full scale (seed); clip_max: dB re each clip's loudest cell (level-invariant)",
    )
    group.add_argument("--cache-dir", default="", help="feature cache (default: beside the data folder)")
    group.add_argument(
        "--cache-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="storage type of cached features (float16 halves the cache)",
    )


def feature_configs(args: argparse.Namespace) -> tuple[AudioConfig, FeatureConfig]:
    audio = AudioConfig(sample_rate=args.sample_rate, duration=args.duration)
    features = FeatureConfig(
        kind=normalise_feature_kind(args.trans_type),
        n_fft=args.n_fft,
        hop_length=args.hop_length,
        n_mels=args.n_mels,
        f_min=args.f_min,
        f_max=args.f_max,
        top_db=args.top_db,
        db_reference=getattr(args, "db_reference", None) or FeatureConfig.db_reference,
    )
    features.validate(audio.sample_rate)
    return audio, features


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    split = SplitConfig()
    group = parser.add_argument_group("split")
    group.add_argument(
        "--split",
        choices=("folds", "random"),
        default=split.method,
        help="official folds (default) or the seed's leaky random 64/16/20 split",
    )
    group.add_argument("--test-fold", type=int, default=split.test_fold)
    group.add_argument("--val-fold", type=int, default=split.val_fold)
    group.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="validate on this share of the training recordings (grouped by fsID)",
    )
    group.add_argument("--train-folds", type=_int_list, default=None, help="e.g. 1,2,3 (default: the rest)")


# Flags a --recipe fills in when they are not given: argparse dest -> (RunConfig section, field).
RECIPE_FLAGS: dict[str, tuple[str, str]] = {
    "trans_type": ("features", "kind"),
    "sample_rate": ("audio", "sample_rate"),
    "duration": ("audio", "duration"),
    "n_fft": ("features", "n_fft"),
    "hop_length": ("features", "hop_length"),
    "n_mels": ("features", "n_mels"),
    "f_min": ("features", "f_min"),
    "f_max": ("features", "f_max"),
    "top_db": ("features", "top_db"),
    "db_reference": ("features", "db_reference"),
    "model": ("model", "name"),
    "ensemble": ("model", "ensemble"),
    "epochs": ("training", "epochs"),
    "batch_size": ("training", "batch_size"),
    "max_lr": ("training", "max_lr"),
    "weight_decay": ("training", "weight_decay"),
    "label_smoothing": ("training", "label_smoothing"),
    "patience": ("training", "patience"),
    "scheduler": ("training", "scheduler"),
    "init_from": ("training", "init_from"),
    "ema_decay": ("training", "ema_decay"),
    "select_epoch": ("training", "select_epoch"),
    "aug_variants": ("augment", "variants"),
    "freq_masks": ("augment", "freq_masks"),
    "freq_mask_width": ("augment", "freq_mask_width"),
    "time_masks": ("augment", "time_masks"),
    "time_mask_width": ("augment", "time_mask_width"),
    "mixup": ("augment", "mixup_alpha"),
    "mixup_domain": ("augment", "mixup_domain"),
    "filter_gain_db": ("augment", "filter_gain_db"),
}


def add_model_training_arguments(parser: argparse.ArgumentParser) -> None:
    training = TrainingConfig()
    group = parser.add_argument_group("model and training (unset flags come from --recipe)")
    group.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="default",
        help="named settings to start from: 'default' (the measured best) or 'seed' (the seed's exact "
        "settings); any flag given explicitly overrides the recipe",
    )
    group.add_argument("--model", help="registered model name (see `urbansound models`)")
    group.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option, VALUE as JSON (e.g. batch_norm=true); repeatable",
    )
    group.add_argument(
        "--ensemble",
        type=int,
        metavar="N",
        help="train N copies of the model from seeds seed..seed+N-1 and average their probabilities "
        "(one model file; N times the training time)",
    )
    group.add_argument("--epochs", type=int)
    group.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=int,
        help="global batch: under torchrun each of N processes takes batch-size / N clips; above the "
        "recipe's batch the peak learning rate grows by sqrt(batch-size / recipe's batch), unless --lr "
        "is given",
    )
    group.add_argument("--lr", "--max-lr", dest="max_lr", type=float, help="peak learning rate")
    group.add_argument("--scheduler", choices=SCHEDULERS, help="onecycle (seed: Adam) or cosine (AdamW)")
    group.add_argument("--weight-decay", type=float)
    group.add_argument("--label-smoothing", type=float)
    group.add_argument("--patience", type=int, help="early stopping patience in epochs")
    group.add_argument(
        "--select-epoch",
        choices=SELECT_EPOCH,
        help="which epoch's weights to keep: best validation accuracy, lowest validation loss, or the last",
    )
    group.add_argument(
        "--ema-decay",
        type=float,
        help="keep an exponential moving average of the weights (e.g. 0.99 per step) and select, validate "
        "and save it; 0 disables",
    )
    group.add_argument(
        "--init-from",
        metavar="MODEL_FILE",
        help="start from the weights of a local model file (fine-tuning); nothing is downloaded",
    )
    group.add_argument("--seed", type=int, default=training.seed)
    group.add_argument("--workers", type=int, default=training.num_workers, help="data-loader workers")
    group.add_argument(
        "--device", default=training.device, help="auto (CUDA, then MPS, then CPU), cuda, mps or cpu"
    )
    group.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default=training.precision,
        help="autocast dtype; auto: bf16 on CUDA (fp16 with loss scaling on GPUs without bf16), else fp32",
    )
    group.add_argument("--compile", action="store_true", help="wrap the model with torch.compile")
    group.add_argument(
        "--data-on-device",
        choices=DATA_ON_DEVICE,
        default=training.data_on_device,
        help="hold the training features in device memory and draw batches there (auto: on accelerators, "
        "when they take at most half the free device memory)",
    )
    group = parser.add_argument_group("augmentation (training only; unset flags come from --recipe)")
    group.add_argument(
        "--aug-variants",
        type=int,
        help="audio variants per training clip (stretch, pitch, shift, gain, noise), computed once, cached",
    )
    group.add_argument("--freq-masks", type=int, help="SpecAugment frequency masks per clip")
    group.add_argument("--freq-mask-width", type=int, help="max bands per frequency mask")
    group.add_argument("--time-masks", type=int, help="SpecAugment time masks per clip")
    group.add_argument("--time-mask-width", type=int, help="max frames per time mask")
    group.add_argument("--mixup", type=float, help="mixup Beta(alpha, alpha); 0 disables")
    group.add_argument(
        "--mixup-domain",
        choices=MIXUP_DOMAINS,
        help="mix dB features (db) or band energies, as two sounds played together (power)",
    )
    group.add_argument(
        "--filter-gain-db",
        type=float,
        help="FilterAugment: add a random smooth gain curve over the bands, up to +-DB (0: off)",
    )


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser, required=False)
    add_feature_arguments(parser)
    add_split_arguments(parser)
    add_model_training_arguments(parser)
    # The recipe, not argparse, supplies the values of flags that are not given.
    parser.set_defaults(**{dest: None for dest in RECIPE_FLAGS})
    group = parser.add_argument_group("run")
    group.add_argument("--name", default="run", help="suffix of the run folder")
    group.add_argument("--runs-dir", default="runs")
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


def _model_options(options: list[str]) -> dict[str, object]:
    parsed: dict[str, object] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-option expects KEY=VALUE, got {option!r}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value  # a bare word is a string (e.g. time_pooling=max)
    return parsed


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run configuration: the recipe's settings, overridden by every flag given explicitly."""
    layout = getattr(args, "layout", "auto")
    if not args.data or (not args.annotations and layout not in ("auto", "folders")):
        raise ConfigError("--annotations and --data are required (or --resume RUN_FOLDER)")
    config = RunConfig(
        annotations=str(args.annotations or ""),
        data_dir=str(args.data),
        layout=layout,
        split=SplitConfig(
            method=getattr(args, "split", "folds"),
            test_fold=getattr(args, "test_fold", SplitConfig.test_fold),
            val_fold=getattr(args, "val_fold", SplitConfig.val_fold),
            val_fraction=args.val_fraction,
            train_folds=getattr(args, "train_folds", None),
        ),
        name=args.name,
        runs_dir=str(args.runs_dir),
        cache_dir=args.cache_dir,
        cache_dtype=args.cache_dtype,
        skip_bad=args.skip_bad,
    )
    apply_recipe(config, args.recipe)
    recipe_model = config.model.name
    recipe_batch, recipe_lr = config.training.batch_size, config.training.max_lr
    for dest, (section, name) in RECIPE_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            setattr(getattr(config, section), name, value)
    if getattr(args, "max_lr", None) is None:
        config.training.max_lr = scaled_peak_lr(recipe_lr, recipe_batch, config.training.batch_size)
    config.features.kind = normalise_feature_kind(config.features.kind)
    if config.model.name != recipe_model:
        config.model.kwargs = {}  # the recipe's options belong to the recipe's model
    config.model.kwargs.update(_model_options(args.model_option))
    config.training.seed = args.seed
    config.training.num_workers = args.workers
    config.training.device = args.device
    config.training.precision = args.precision
    config.training.compile = args.compile
    config.training.data_on_device = args.data_on_device
    config.validate()
    return config


def cmd_train(args: argparse.Namespace) -> int:
    from urbansound.training.distributed import is_main_process
    from urbansound.training.run import dry_run, train

    if args.resume is not None:
        run_dir = train(RunConfig(), resume_dir=args.resume, progress=not args.quiet)
    else:
        config = run_config_from_args(args)
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
    path = draw_class_examples(args.annotations, args.data, Path(args.out), audio, features)
    print(f"class examples: {path}")
    return 0


def add_visualize_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_feature_arguments(parser)
    parser.add_argument("--out", default="runs/class_examples.png", help="PNG to write")


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
        config.annotations, config.data_dir, run_dir / "class_examples.png", config.audio, config.features
    )
    print(f"demo run folder: {run_dir}")
    for name in (
        "report.md",
        "metrics.json",
        "train_test_loss.png",
        "confusion_matrix.png",
        "class_examples.png",
        "model.safetensors",
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
    add_feature_arguments(parser)


def cmd_crossval(args: argparse.Namespace) -> int:
    from urbansound.training.crossval import crossval

    if args.resume is not None:
        out_dir = crossval(
            RunConfig(), folds=args.folds, out_dir=args.resume, resume=True, progress=not args.quiet
        )
    else:
        config = run_config_from_args(args)
        out_dir = crossval(
            config, folds=args.folds, out_dir=Path(args.out) if args.out else None, progress=not args.quiet
        )
    print((out_dir / "crossval.md").read_text())
    print(f"cross-validation folder: {out_dir}")
    return 0


def add_crossval_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser, required=False)
    add_feature_arguments(parser)
    group = parser.add_argument_group("folds")
    group.add_argument(
        "--folds", type=_int_list, default=None, help="test folds to run, e.g. 1,2 (default: all)"
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="validate on this share of the training recordings (by fsID) instead of the next fold",
    )
    add_model_training_arguments(parser)
    parser.set_defaults(**{dest: None for dest in RECIPE_FLAGS})
    group = parser.add_argument_group("run")
    group.add_argument("--name", default="run", help="suffix of the cross-validation folder")
    group.add_argument("--runs-dir", default="runs")
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
    ("train", "train a classifier (the seed's train.py)", add_train_arguments, cmd_train),
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

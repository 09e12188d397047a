"""What the page shows besides a classification: the run a model comes from, and example clips bundled with
``serve --examples DIR`` that a visitor can classify with one click.

Example::

    clips = find_examples(Path("examples"))  # {"siren.wav": Path("examples/siren.wav"), ...}
    run_name(Path("runs/20240101-120000-demo/model.safetensors"))  # "20240101-120000-demo"
"""

from __future__ import annotations

from pathlib import Path

from urbansound.errors import ConfigError

# Suffixes of files libsndfile decodes (as the upload field accepts); others in the folder are ignored.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".mp3")
MAX_EXAMPLES = 12  # a row of buttons, not a dataset browser


def find_examples(folder: str | Path, limit: int = MAX_EXAMPLES) -> dict[str, Path]:
    """The first ``limit`` audio files (by name) directly in ``folder``, by file name.

    Raises:
        ConfigError: ``folder`` is not a folder, or holds no audio file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--examples {folder}: not a folder")
    clips = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not clips:
        raise ConfigError(
            f"--examples {folder}: no audio files in it (looked for {', '.join(AUDIO_SUFFIXES)})"
        )
    return {p.name: p for p in clips[:limit]}


def run_name(model_file: Path) -> str | None:
    """The name of the run folder ``model_file`` belongs to (``crossval-folder/foldN`` for a fold of a
    cross-validation), or None for a model file outside any run folder."""
    from urbansound.training.run_folder import RunFolder  # training modules load on demand

    run = model_file.parent
    if not (run / RunFolder.CONFIG).is_file():
        return None
    if (run.parent / RunFolder.CROSSVAL_SUMMARY).is_file():
        return f"{run.parent.name}/{run.name}"
    return run.name


def describe_model(model_path: str | Path) -> tuple[str, str | None]:
    """The model file's name and its run's (:func:`run_name`) for what ``serve`` was given: a model file, a
    run folder or a cross-validation folder (resolved as ``Predictor.from_file`` resolves it)."""
    from urbansound.training.run_folder import resolve_model_file

    model_file = resolve_model_file(model_path)
    return model_file.name, run_name(model_file)

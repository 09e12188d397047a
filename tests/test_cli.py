"""The command line end to end, as a user runs it: synth, dry run, train, visualize, train.py, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "--sample-rate",
    "16000",
    "--duration",
    "1",
    "--n-fft",
    "512",
    "--hop-length",
    "256",
    "--n-mels",
    "32",
]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "urbansound", "-q", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("cli")
    result = run("synth", str(dest), "--recordings-per-class", "3", "--clips-per-recording", "2")
    assert result.returncode == 0, result.stderr
    return dest / "UrbanSound8K"


def data_args(root: Path) -> list[str]:
    return ["--annotations", str(root / "metadata" / "UrbanSound8K.csv"), "--data", str(root / "audio")]


def test_synth_writes_official_layout(dataset: Path) -> None:
    header = (dataset / "metadata" / "UrbanSound8K.csv").read_text().splitlines()[0]
    assert header == "slice_file_name,fsID,start,end,salience,fold,classID,class"
    assert sorted(p.name for p in (dataset / "audio").iterdir()) == sorted(f"fold{i}" for i in range(1, 11))


def test_dry_run_prints_split_sizes_without_decoding(dataset: Path, tmp_path: Path) -> None:
    result = run(
        "train",
        *data_args(dataset),
        "--dry-run",
        "--test-fold",
        "1",
        "--val-fold",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr
    assert "60 clips, 10 classes" in result.stdout
    assert "test fold 1" in result.stdout
    assert not (tmp_path / "cache").exists()  # nothing decoded, nothing cached


def test_random_split_reproduces_seed_proportions_and_warns(dataset: Path) -> None:
    result = run("train", *data_args(dataset), "--dry-run", "--split", "random")
    assert result.returncode == 0, result.stderr
    assert "train 39, val 9, test 12" in result.stdout  # int(60*0.2)=12, int(48*0.2)=9
    assert "recording" in result.stderr  # the leak warning


def test_train_then_train_py_compat(dataset: Path, tmp_path: Path) -> None:
    common = [
        *data_args(dataset),
        "--epochs",
        "2",
        *SMALL,
        "--test-fold",
        "1",
        "--val-fold",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    result = run(
        "train", *common, "--runs-dir", str(tmp_path / "runs"), "--name", "cli", "--trans_type", "gamma"
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.endswith("-cli")
    assert f"run folder: {run_dir}" in result.stdout
    config = json.loads((run_dir / "config.json").read_text())
    assert config["features"]["kind"] == "gammatone"
    assert "test fold 1" in (run_dir / "report.md").read_text()
    # The default recipe is a 4-seed ensemble: four members trained, one model file averaging them.
    assert config["model"]["ensemble"] == 4 and (run_dir / "checkpoint-member4.pt").is_file()
    assert json.loads((run_dir / "metrics.json").read_text())["ensemble"]["seeds"] == [0, 1, 2, 3]

    seed_style = subprocess.run(
        [
            sys.executable,
            "train.py",
            *common,
            "--runs-dir",
            str(tmp_path / "seed"),
            "--trans_type",
            "mel_spec",
            "-q",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert seed_style.returncode == 0, seed_style.stderr
    (seed_run,) = (tmp_path / "seed").iterdir()
    assert json.loads((seed_run / "config.json").read_text())["features"]["kind"] == "mel_spec"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "1", "--model", "no_such_model"], "unknown model 'no_such_model'"),
        (["--trans_type", "wavelet"], "unknown feature kind 'wavelet'"),
        (["--test-fold", "11", "--dry-run"], "test fold 11 has no clips"),
        (["--val-fold", "1", "--test-fold", "1", "--dry-run"], "must differ"),
    ],
)
def test_bad_parameters_give_clear_errors(dataset: Path, args: list[str], message: str) -> None:
    result = run("train", *data_args(dataset), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_metadata_reports_every_problem_without_traceback(dataset: Path, tmp_path: Path) -> None:
    lines = (dataset / "metadata" / "UrbanSound8K.csv").read_text().splitlines()
    first = lines[1].split(",")
    missing = ",".join(["nope-1-0-0.wav", *first[1:]])
    escaping = ",".join(["../../etc/passwd", *first[1:]])
    bad_fold = first.copy()
    bad_fold[5] = "12"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([lines[0], *lines[1:], missing, escaping, ",".join(bad_fold)]) + "\n")
    result = run("train", "--annotations", str(bad), "--data", str(dataset / "audio"), "--dry-run")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for expected in ("nope-1-0-0.wav", "escape", "fold 12", "3 problem(s)"):
        assert expected in result.stderr, expected
    skipped = run(
        "train", "--annotations", str(bad), "--data", str(dataset / "audio"), "--dry-run", "--skip-bad"
    )
    assert skipped.returncode == 0, skipped.stderr
    assert "60 clips" in skipped.stdout and "3 skipped" in skipped.stdout


def test_missing_paths_are_named(tmp_path: Path) -> None:
    result = run("train", "--annotations", str(tmp_path / "none.csv"), "--data", str(tmp_path))
    assert result.returncode == 2 and "none.csv" in result.stderr and "Traceback" not in result.stderr
    result = run("train", "--resume", str(tmp_path))
    assert result.returncode == 2 and "not a run folder" in result.stderr


def test_visualize_draws_class_examples(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "examples.png"
    result = run("visualize", *data_args(dataset), *SMALL, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000  # ten rows of waveform + two spectrograms, not an empty canvas


def test_print_config_then_config_reproduces_the_resolved_configuration(
    dataset: Path, tmp_path: Path
) -> None:
    flags = [
        *data_args(dataset),
        "--recipe",
        "baseline",
        *SMALL,
        "--epochs",
        "1",
        "--batch-size",
        "32",  # above the baseline's 16: the resolved (scaled) peak rate is what the file records
        "--test-fold",
        "1",
        "--val-fold",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    printed = run("train", *flags, "--print-config")
    assert printed.returncode == 0, printed.stderr
    resolved = json.loads(printed.stdout)
    assert resolved["recipe"] == "baseline" and resolved["training"]["max_lr"] == pytest.approx(1e-3 * 2**0.5)
    assert not (tmp_path / "runs").exists()  # printing trains nothing
    saved = tmp_path / "edited.json"
    saved.write_text(printed.stdout)
    result = run("train", "--config", str(saved))
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "config.json").read_text()) == resolved
    # The same file through --print-config FILE, with a flag overriding it.
    again = tmp_path / "again.json"
    assert run("train", "--config", str(saved), "--epochs", "2", "--print-config", str(again)).returncode == 0
    assert json.loads(again.read_text()) == {**resolved, "training": {**resolved["training"], "epochs": 2}}


def test_bad_choices_and_config_files_are_usage_errors(dataset: Path, tmp_path: Path) -> None:
    result = run("train", *data_args(dataset), "--precision", "fp8", "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown precision 'fp8'; choose one of auto, fp32, bf16, fp16" in result.stderr
    result = run("train", "--config", str(tmp_path / "missing.json"))
    assert result.returncode == 2 and "missing.json" in result.stderr and "Traceback" not in result.stderr

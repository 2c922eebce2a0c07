"""Tests of ``maskid train siamese``: argument checks and a tiny end-to-end run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cli.main import build_parser
from core.settings import Settings
from core.siamese.model_file import MAX_FILE_BYTES, load_head

PEOPLE = ("Adrien_Brody", "Amelie_Mauresmo", "Andre_Agassi", "Andy_Roddick", "Angelina_Jolie", "Ari_Fleischer")
PHOTOS_PER_PERSON = 3


@pytest.mark.parametrize(
    "option",
    [
        ["--masks", "0"],
        ["--people", "1"],
        ["--skip-people", "-1"],
        ["--validation-fraction", "1.5"],
        ["--max-epochs", "zero"],
        ["--batch-people", "1"],
        ["--loss", "hinge"],
    ],
)
def test_train_siamese_rejects_invalid_option(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "siamese", "--out", "head.pt", *option])
    assert exit_info.value.code == 2
    assert option[0] in capsys.readouterr().err


def test_train_siamese_defaults() -> None:
    args = build_parser().parse_args(["train", "siamese", "--out", "head.pt"])
    assert args.loss == "both"
    assert args.layer == "repeat_3"
    assert args.masks == 3
    assert args.skip_people == 700
    assert args.people is None


@pytest.mark.datasets
def test_train_siamese_writes_head_and_curves(
    settings: Settings, datasets_dir: Path, tmp_path: Path, one_torch_thread: None
) -> None:
    dataset = tmp_path / "people"
    for name in PEOPLE:
        (dataset / name).mkdir(parents=True)
        for photo in sorted((datasets_dir / "lfw" / name).iterdir())[:PHOTOS_PER_PERSON]:
            (dataset / name / photo.name).symlink_to(photo)
    out = tmp_path / "model" / "head.pt"
    argv = ["train", "siamese", "--dataset", str(dataset), "--out", str(out), "--skip-people", "0"]
    argv += ["--masks", "1", "--max-epochs", "2", "--batch-people", "2", "--validation-fraction", "0.34", "--json"]
    args = build_parser().parse_args(argv)

    result = asyncio.run(args.handler(args, settings.replace(torch_threads=1)))

    _, info, model_id = load_head(out)
    assert result.data["model_id"] == model_id
    assert model_id.startswith("facenet-casia-20180408+siamese-")
    assert out.stat().st_size <= MAX_FILE_BYTES
    assert info.loss in ("contrastive", "triplet")
    assert info.training_people == 4
    assert info.validation_people == 2
    assert info.masks_per_photo == 1
    assert "masked_rank1" in info.validation
    assert "base_masked_rank1" in info.validation
    assert out.with_suffix(".curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads(out.with_suffix(".history.json").read_text())
    assert [run["loss"] for run in history] == ["contrastive", "triplet"]
    assert all(len(run["epochs"]) == 3 for run in history)

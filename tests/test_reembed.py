"""Model choice and `maskid gallery reembed` on a real SQLite gallery and real LFW photos.

The head here is FaceNet's own last layers, untrained, so its descriptors equal the base
network's while its model id differs: every difference in a test comes from the model id.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from cli_environment import in_process_runner
from gallery_helpers import head_info, service_for

from core.backbones import FaceNetCasia
from core.embedding import Embedder
from core.errors import ConfigurationError, ModelError
from core.images import load_image
from core.mask_detection import shipped_classifier
from core.pipeline import FacePipeline, load_backbone
from core.reembed import reembed_gallery
from core.settings import Settings
from core.siamese.backbone import SiameseBackbone
from core.siamese.head import SiameseHead
from core.siamese.model_file import save_head
from core.siamese.trunk import load_facenet

LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 40_000_000}
PEOPLE = ("Colin_Powell", "Gerhard_Schroeder", "George_W_Bush")


@pytest.fixture(scope="module")
def head_file(model_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("head") / "head.pt"
    save_head(
        path,
        SiameseHead.from_base(load_facenet(Settings(cache_dir=model_cache_dir)), "repeat_3"),
        head_info("repeat_3"),
    )
    return path


@pytest.fixture(scope="module")
def head_pipeline(pipeline: FacePipeline, head_file: Path, model_cache_dir: Path) -> FacePipeline:
    settings = Settings(cache_dir=model_cache_dir, model=str(head_file))
    embedder = Embedder(SiameseBackbone(settings, head_file), flip=settings.flip, torch_threads=1)
    return FacePipeline(pipeline.detector, embedder, pipeline.alignment)


def copy_photos(datasets_dir: Path, folder: Path) -> list[tuple[str, Path]]:
    """Copy the first photo of each person into ``folder`` and return (name, path) pairs."""
    folder.mkdir()
    photos = []
    for person in PEOPLE:
        source = datasets_dir / "lfw" / person / f"{person}_0001.jpg"
        photos.append((person.replace("_", " "), Path(shutil.copy(source, folder / source.name))))
    return photos


async def enroll_copies(
    settings: Settings, pipeline: FacePipeline, datasets_dir: Path, folder: Path
) -> list[tuple[str, Path]]:
    """Copy one photo of each person into ``folder``, enroll the copies with ``pipeline`` and return them."""
    photos = copy_photos(datasets_dir, folder)
    async with service_for(settings, pipeline) as service:
        for name, path in photos:
            await service.enroll(name, load_image(path, **LIMITS))
    return photos


def model_counts(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as connection:
        rows = connection.execute("SELECT model_id, count(*) FROM templates GROUP BY model_id").fetchall()
    return dict(rows)


def test_default_model_is_shipped_head() -> None:
    assert Settings().model == "siamese"


def test_model_setting_rejects_unknown_name() -> None:
    with pytest.raises(ConfigurationError, match="MASKID_MODEL"):
        Settings(model="resnet")


def test_base_model_selects_facenet(tmp_path: Path) -> None:
    backbone = load_backbone(Settings(cache_dir=tmp_path, model="base"))

    assert isinstance(backbone, FaceNetCasia)


def test_head_path_selects_siamese_backbone(head_file: Path, tmp_path: Path) -> None:
    backbone = load_backbone(Settings(cache_dir=tmp_path, model=str(head_file)))

    assert isinstance(backbone, SiameseBackbone)
    assert backbone.model_id.startswith(f"{FaceNetCasia.model_id}+siamese-")
    assert backbone.feature_model_id == FaceNetCasia.model_id


def test_siamese_model_loads_shipped_head(tmp_path: Path) -> None:
    backbone = load_backbone(Settings(cache_dir=tmp_path, model="siamese"))

    assert isinstance(backbone, SiameseBackbone)
    assert backbone.info.base_model_id == FaceNetCasia.model_id
    assert backbone.info.layer == "repeat_3"
    assert backbone.model_id.startswith(f"{FaceNetCasia.model_id}+siamese-")


def test_missing_head_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"missing\.pt"):
        load_backbone(Settings(cache_dir=tmp_path, model=str(tmp_path / "missing.pt")))


@pytest.mark.datasets
def test_head_pipeline_keeps_feature_model_id(pipeline: FacePipeline, head_pipeline: FacePipeline) -> None:
    assert head_pipeline.model_id != pipeline.model_id
    assert head_pipeline.feature_model_id == pipeline.feature_model_id
    assert shipped_classifier(head_pipeline.feature_model_id) is not None


@pytest.mark.datasets
async def test_reembed_moves_gallery_to_new_model(
    settings: Settings,
    pipeline: FacePipeline,
    head_pipeline: FacePipeline,
    datasets_dir: Path,
    tmp_path: Path,
    one_torch_thread: None,
) -> None:
    photos = await enroll_copies(settings, pipeline, datasets_dir, tmp_path / "photos")

    async with service_for(settings, head_pipeline) as service:
        assert await service.other_models() == [pipeline.model_id]
        before = await service.identify(load_image(photos[0][1], **LIMITS))
        summary = await reembed_gallery(service, pipeline.model_id, show_progress=False)
        after = await service.identify(load_image(photos[0][1], **LIMITS))

    counts = model_counts(settings.db_path)
    assert summary.reembedded == len(PEOPLE)
    assert summary.missing == []
    assert len(before[0].candidates) == 0
    assert after[0].match is not None
    assert after[0].match.person.name == photos[0][0]
    assert counts[head_pipeline.model_id] == counts[pipeline.model_id]


@pytest.mark.datasets
async def test_reembed_lists_missing_and_changed_files(
    settings: Settings,
    pipeline: FacePipeline,
    head_pipeline: FacePipeline,
    datasets_dir: Path,
    tmp_path: Path,
    one_torch_thread: None,
) -> None:
    photos = await enroll_copies(settings, pipeline, datasets_dir, tmp_path / "photos")
    async with service_for(settings, pipeline) as service:
        chat_photo = load_image((datasets_dir / "lfw" / PEOPLE[0] / f"{PEOPLE[0]}_0002.jpg").read_bytes(), **LIMITS)
        await service.enroll("Chat User", chat_photo, source="telegram", owner_id=7, chat_id=-100)
    photos[0][1].unlink()
    shutil.copy(photos[2][1], photos[1][1])

    async with service_for(settings, head_pipeline) as service:
        summary = await reembed_gallery(service, pipeline.model_id, show_progress=False)
        again = await reembed_gallery(service, pipeline.model_id, show_progress=False)

    reasons = dict(summary.missing)
    assert summary.reembedded == 1
    assert len(reasons) == 3
    assert "not found" in reasons[str(photos[0][1])]
    assert reasons[str(photos[1][1])] == "the file changed after enrollment"
    assert any("came from a chat" in reason for reason in reasons.values())
    assert again.already_done == 1
    assert again.reembedded == 0


@pytest.mark.datasets
def test_reembed_command_reports_missing_photo(
    pipeline: FacePipeline,
    head_pipeline: FacePipeline,
    datasets_dir: Path,
    model_cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    one_torch_thread: None,
) -> None:
    db = tmp_path / "gallery.sqlite3"
    photos = copy_photos(datasets_dir, tmp_path / "photos")
    run = in_process_runner(db, model_cache_dir, tmp_path, pipeline, monkeypatch, capsys)
    for name, path in photos:
        assert run("enroll", name, path).exit_code == 0
    nothing_to_do = run("gallery", "reembed")
    photos[0][1].unlink()

    run = in_process_runner(db, model_cache_dir, tmp_path, head_pipeline, monkeypatch, capsys)
    result = run("gallery", "reembed", "--json")
    people = run("people", "--json")

    assert nothing_to_do.exit_code == 1
    assert "no other model to re-embed from" in nothing_to_do.stderr
    assert result.exit_code == 1
    assert result.json()["reembedded"] == len(PEOPLE) - 1
    assert result.json()["missing"][0]["image"] == str(photos[0][1])
    assert len(people.json()) == len(PEOPLE) - 1


@pytest.mark.parametrize("content", ["tensor", "dict", "text"])
def test_foreign_head_file_is_model_error(content: str, tmp_path: Path) -> None:
    path = tmp_path / "head.pt"
    if content == "text":
        path.write_text("not a model")
    else:
        torch.save(torch.zeros(3) if content == "tensor" else {"weights": torch.zeros(3)}, path)

    with pytest.raises(ModelError, match="is not a head file"):
        load_backbone(Settings(cache_dir=tmp_path, model=str(path)))


def test_head_folder_is_model_error(tmp_path: Path) -> None:
    folder = tmp_path / "head.pt"
    folder.mkdir()

    with pytest.raises(ModelError, match="is a folder"):
        load_backbone(Settings(cache_dir=tmp_path, model=str(folder)))


@pytest.mark.datasets
def test_enroll_adds_to_built_person(
    pipeline: FacePipeline,
    datasets_dir: Path,
    model_cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    one_torch_thread: None,
) -> None:
    dataset = tmp_path / "dataset" / "Colin_Powell"
    dataset.mkdir(parents=True)
    shutil.copy(datasets_dir / "lfw" / "Colin_Powell" / "Colin_Powell_0001.jpg", dataset)
    run = in_process_runner(tmp_path / "gallery.sqlite3", model_cache_dir, tmp_path, pipeline, monkeypatch, capsys)

    assert run("gallery", "build", tmp_path / "dataset").exit_code == 0
    assert run("enroll", "Colin_Powell", datasets_dir / "lfw" / "Colin_Powell" / "Colin_Powell_0002.jpg").exit_code == 0
    people = run("people", "--json").json()

    removed = run("remove", "Colin_Powell", "--json")

    assert len(people) == 1
    assert people[0]["source"] == "dataset"
    assert people[0]["images"] == 2
    assert removed.exit_code == 0
    assert [item["name"] for item in removed.json()] == ["Colin Powell"]


@pytest.mark.datasets
async def test_reembed_same_photo_for_two_people(
    settings: Settings,
    pipeline: FacePipeline,
    head_pipeline: FacePipeline,
    datasets_dir: Path,
    tmp_path: Path,
    one_torch_thread: None,
) -> None:
    photo = copy_photos(datasets_dir, tmp_path / "photos")[0][1]
    async with service_for(settings, pipeline) as service:
        await service.enroll("First Name", load_image(photo, **LIMITS))
        await service.enroll("Second Name", load_image(photo, **LIMITS))

    async with service_for(settings, head_pipeline) as service:
        summary = await reembed_gallery(service, pipeline.model_id, show_progress=False)

    assert summary.images == 2
    assert summary.reembedded == 2
    assert summary.already_done == 0


@pytest.mark.datasets
async def test_start_warns_about_people_of_other_models(
    settings: Settings,
    pipeline: FacePipeline,
    head_pipeline: FacePipeline,
    datasets_dir: Path,
    tmp_path: Path,
    one_torch_thread: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    photos = copy_photos(datasets_dir, tmp_path / "photos")
    async with service_for(settings, pipeline) as service:
        await service.enroll(photos[0][0], load_image(photos[0][1], **LIMITS))
    async with service_for(settings, head_pipeline) as service:
        await service.enroll(photos[-1][0], load_image(photos[-1][1], **LIMITS))

    caplog.clear()
    async with service_for(settings, head_pipeline):
        pass

    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("1 people have templates of" in message and "not searched" in message for message in warnings)

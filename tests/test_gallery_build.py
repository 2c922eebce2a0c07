"""Tests of building a gallery from a folder-per-person dataset: scanning, reruns, bad files, interruption.

Most cases call ``core.gallery_build`` in-process with the session's loaded pipeline.
The interruption case runs the ``maskid`` command line in a subprocess and kills it
with SIGKILL, because only a real process death shows that committed photos survive.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_environment import cli_environment
from PIL import Image

from core.errors import DatasetError
from core.gallery_build import BuildSummary, build_gallery, person_name_from_folder, scan_dataset
from core.pipeline import FacePipeline
from core.service import FaceService
from core.settings import Settings
from core.storage import SqliteGalleryStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]

# LFW people whose photos 1-4 each have one clearly detected face.
LFW_PEOPLE = ("Alan_Greenspan", "Angela_Merkel", "Al_Sharpton", "Albert_Costa")

# Runs the real CLI entry point with one photo per model call, so that each photo is
# committed after its own model call and a kill after the first commit lands before the last.
ONE_PHOTO_PER_BATCH = (
    "import sys, core.gallery_build; core.gallery_build.BATCH_SIZE = 1; from cli.main import main; sys.exit(main())"
)


def lfw_photo(datasets_dir: Path, folder: str, number: int) -> Path:
    return datasets_dir / "lfw" / folder / f"{folder}_{number:04d}.jpg"


def link_photo(target: Path, link: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def link_lfw_tree(root: Path, datasets_dir: Path, folders: tuple[str, ...], numbers: tuple[int, ...]) -> list[Path]:
    """Link LFW photos into ``root`` in the LFW layout ``Name/Name_0001.jpg`` and return the links."""
    links = []
    for folder in folders:
        for number in numbers:
            photo = lfw_photo(datasets_dir, folder, number)
            links.append(link_photo(photo, root / folder / photo.name))
    return links


def write_grey_png(path: Path) -> Path:
    """Write a plain grey 200x200 PNG: a valid image with no face in it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (200, 200), (128, 128, 128)).save(path)
    return path


def write_truncated_jpeg(source: Path, path: Path) -> Path:
    """Write the first half of ``source``, a JPEG that decoders reject as truncated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_only(db: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True))


def count_rows(db: Path, table: str) -> int:
    with read_only(db) as connection:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def image_hash_counts(db: Path) -> dict[str, int]:
    with read_only(db) as connection:
        return dict(connection.execute("SELECT sha256, count(*) FROM images GROUP BY sha256"))


def person_names(db: Path) -> set[str]:
    with read_only(db) as connection:
        return {row[0] for row in connection.execute("SELECT name FROM people")}


def build(settings: Settings, pipeline: FacePipeline, root: Path) -> BuildSummary:
    """Run :func:`build_gallery` on ``root`` against the gallery of ``settings``, with the session pipeline."""

    async def run() -> BuildSummary:
        service = FaceService(settings, SqliteGalleryStore.from_settings(settings), pipeline)
        async with service:
            return await build_gallery(service, root, show_progress=False)

    return asyncio.run(run())


def wait_for_committed_image(db: Path, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll ``db`` read-only until it has an images row, the process exits, or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(sqlite3.OperationalError):  # the file or its tables may not exist yet
            if count_rows(db, "images") > 0:
                return
        time.sleep(0.02)


# Scanning, no model needed.


@pytest.mark.parametrize(
    ("folder_name", "expected"),
    [
        ("George_W_Bush", "George W Bush"),
        ("alice", "alice"),
        ("Zoë_Ångström", "Zoë Ångström"),
        ("_Mary__Ann_", "Mary Ann"),
    ],
    ids=["lfw-underscores", "plain", "unicode", "repeated-underscores"],
)
def test_person_name_from_folder(folder_name: str, expected: str) -> None:
    assert person_name_from_folder(folder_name) == expected


def test_scan_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset folder .*missing.* not found"):
        scan_dataset(tmp_path / "missing")


def test_scan_root_is_file(tmp_path: Path) -> None:
    root = tmp_path / "photos.jpg"
    root.write_bytes(b"not a folder")

    with pytest.raises(DatasetError, match=r"is not a folder; expected ROOT/<person>/<image>"):
        scan_dataset(root)


def test_scan_lists_photos_and_skips_others(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "bob").mkdir(parents=True)
    (root / "alice" / "2019").mkdir(parents=True)
    (root / "Empty_Person").mkdir()
    for name in ("bob/b.JPG", "alice/z.png", "alice/a.jpg", "alice/2019/beach.webp"):
        (root / name).write_bytes(b"scan does not read the bytes")
    (root / "alice" / "notes.txt").write_text("not a photo")
    (root / "alice" / "loop").symlink_to("..")

    summary = BuildSummary()
    images = scan_dataset(root, summary)

    assert [(item.person_name, item.path.relative_to(root).as_posix()) for item in images] == [
        ("alice", "alice/2019/beach.webp"),
        ("alice", "alice/a.jpg"),
        ("alice", "alice/z.png"),
        ("bob", "bob/b.JPG"),
    ]
    assert sorted(summary.skipped) == [
        (root / "alice" / "loop", "symbolic link to a folder, not followed"),
        (root / "alice" / "notes.txt", "not an image file name"),
    ]


# Building with the model.


@pytest.mark.datasets
@pytest.mark.parametrize(
    ("layout", "expected_people"),
    [
        ("lfw", {"Alan Greenspan", "Angela Merkel"}),
        ("plain", {"alan", "angela"}),
    ],
    ids=["lfw-layout", "plain-layout"],
)
def test_build_enrolls_everyone(
    tmp_path: Path,
    settings: Settings,
    pipeline: FacePipeline,
    datasets_dir: Path,
    layout: str,
    expected_people: set[str],
) -> None:
    root = tmp_path / "photos"
    if layout == "lfw":
        link_lfw_tree(root, datasets_dir, LFW_PEOPLE[:2], (1, 2))
    else:
        for folder, person in (("Alan_Greenspan", "alan"), ("Angela_Merkel", "angela")):
            for number, photo_name in enumerate(("holiday.jpg", "work.jpg"), start=1):
                link_photo(lfw_photo(datasets_dir, folder, number), root / person / photo_name)

    summary = build(settings, pipeline, root)

    assert summary.enrolled == 4
    assert summary.people == expected_people
    assert summary.skipped == []
    assert person_names(settings.db_path) == expected_people
    assert count_rows(settings.db_path, "templates") == 4 * (1 + settings.synthetic_masks)


@pytest.mark.datasets
def test_build_rerun_adds_nothing(
    tmp_path: Path, settings: Settings, pipeline: FacePipeline, datasets_dir: Path
) -> None:
    root = tmp_path / "photos"
    photos = link_lfw_tree(root, datasets_dir, LFW_PEOPLE[:2], (1, 2))
    build(settings, pipeline, root)

    second = build(settings, pipeline, root)

    assert second.enrolled == 0
    assert second.already_known == 4
    assert second.people == {"Alan Greenspan", "Angela Merkel"}
    assert image_hash_counts(settings.db_path) == {sha256_of(photo): 1 for photo in photos}
    assert count_rows(settings.db_path, "templates") == 4 * (1 + settings.synthetic_masks)
    assert count_rows(settings.db_path, "people") == 2


@pytest.mark.datasets
def test_build_same_photo_twice_in_tree(
    tmp_path: Path, settings: Settings, pipeline: FacePipeline, datasets_dir: Path
) -> None:
    photo = lfw_photo(datasets_dir, "Alan_Greenspan", 1)
    root = tmp_path / "photos"
    link_photo(photo, root / "Alan_Greenspan" / "first.jpg")
    link_photo(photo, root / "Alan_Greenspan" / "copy.jpg")

    summary = build(settings, pipeline, root)

    assert summary.enrolled == 1
    assert summary.already_known == 1
    assert image_hash_counts(settings.db_path) == {sha256_of(photo): 1}


@pytest.mark.datasets
def test_build_skips_bad_files_and_continues(
    tmp_path: Path, settings: Settings, pipeline: FacePipeline, datasets_dir: Path
) -> None:
    root = tmp_path / "photos"
    link_lfw_tree(root, datasets_dir, LFW_PEOPLE[:1], (1, 2))
    unicode_person = root / "Zoë_Ångström"
    unicode_person.mkdir()
    (unicode_person / "Zoë_0001.jpg").write_bytes(lfw_photo(datasets_dir, "Angela_Merkel", 1).read_bytes())
    (root / "Empty_Person").mkdir()
    person_dir = root / "Alan_Greenspan"
    (person_dir / "notes.txt").write_text("not a photo")
    (person_dir / "loop").symlink_to("..")
    (person_dir / "dangling.jpg").symlink_to(tmp_path / "deleted.jpg")
    write_truncated_jpeg(lfw_photo(datasets_dir, "Alan_Greenspan", 3), person_dir / "broken.jpg")
    write_grey_png(person_dir / "wall.png")

    summary = build(settings, pipeline, root)
    reasons = {path.name: reason for path, reason in summary.skipped}

    assert summary.enrolled == 3
    assert summary.no_face == 1
    assert summary.people == {"Alan Greenspan", "Zoë Ångström"}
    assert sorted(reasons) == ["broken.jpg", "dangling.jpg", "loop", "notes.txt"]
    assert reasons["notes.txt"] == "not an image file name"
    assert "file not found" in reasons["dangling.jpg"]
    assert "truncated or corrupt JPEG" in reasons["broken.jpg"]
    assert person_names(settings.db_path) == {"Alan Greenspan", "Zoë Ångström"}
    assert count_rows(settings.db_path, "templates") == 3 * (1 + settings.synthetic_masks)


def test_build_records_no_face_photos(tmp_path: Path, settings: Settings, pipeline: FacePipeline) -> None:
    root = tmp_path / "photos"
    write_grey_png(root / "Grey_Wall" / "wall.png")

    summary = build(settings, pipeline, root)

    assert summary.no_face == 1
    assert summary.enrolled == 0
    assert summary.people == set()
    assert count_rows(settings.db_path, "people") == 0


def test_no_face_rerun_lists_nobody(tmp_path: Path, settings: Settings, pipeline: FacePipeline) -> None:
    root = tmp_path / "photos"
    write_grey_png(root / "Grey_Wall" / "wall.png")
    build(settings, pipeline, root)

    second = build(settings, pipeline, root)

    assert second.people == set()


# Interruption, in a subprocess.


@pytest.mark.datasets
def test_build_resumes_after_sigkill(
    tmp_path: Path, settings: Settings, pipeline: FacePipeline, datasets_dir: Path, model_cache_dir: Path
) -> None:
    root = tmp_path / "photos"
    photos = link_lfw_tree(root, datasets_dir, LFW_PEOPLE, (1, 2, 3))
    db = tmp_path / "interrupted.sqlite3"
    environment = cli_environment(db, model_cache_dir)

    process = subprocess.Popen(
        [sys.executable, "-c", ONE_PHOTO_PER_BATCH, "gallery", "build", str(root)],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_committed_image(db, process, timeout_s=180)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    committed_before_kill = count_rows(db, "images")

    assert process.returncode == -signal.SIGKILL
    assert 0 < committed_before_kill < len(photos)

    rerun = build(settings.replace(db_path=db), pipeline, root)
    assert rerun.already_known == committed_before_kill
    assert rerun.enrolled == len(photos) - committed_before_kill

    reference = build(settings, pipeline, root)  # the same tree, uninterrupted, into another database
    assert reference.enrolled == len(photos)
    assert image_hash_counts(db) == {sha256_of(photo): 1 for photo in photos}
    assert image_hash_counts(db) == image_hash_counts(settings.db_path)
    for table in ("people", "images", "templates"):
        assert count_rows(db, table) == count_rows(settings.db_path, table), table
    with read_only(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

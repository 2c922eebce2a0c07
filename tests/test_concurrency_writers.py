"""Concurrent writers on one gallery database, each in its own process.

The first case is the deployment: the bot enrolls photos through ``FaceService.enroll`` while
``maskid gallery build`` writes the same file. The second runs several processes that open
a new database at the same moment and enroll as fast as SQLite allows, so that their write
transactions queue for the lock. Both check that every expected row is there exactly once.
The last case checks that a second build into the same gallery is turned away.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_environment import cli_environment
from test_gallery_build import build, lfw_photo, link_lfw_tree, write_grey_png

from core.errors import StorageError
from core.gallery_build import exclusive_build
from core.pipeline import FacePipeline
from core.settings import Settings
from core.storage.schema import SCHEMA_VERSION

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES_PER_PHOTO = 1 + Settings().synthetic_masks

DATASET_PEOPLE = ("Alan_Greenspan", "Angela_Merkel")
DATASET_NUMBERS = (1, 2)
# What the bot process enrolls: (person name, LFW folder, photo number, Telegram user id).
BOT_ENROLLMENTS = (
    ("Colin", "Colin_Powell", 1, 1001),
    ("Colin", "Colin_Powell", 2, 1001),
    ("George", "George_W_Bush", 1, 1002),
)
BOT_CHAT_ID = -100500

# Runs `maskid gallery build` with one photo per model call, and its last photo waits until
# the bot process has written its result file. The bot process starts enrolling only after the
# build's first commit. So the bot's writes fall between the build's first and last commits,
# however the two processes are scheduled.
BUILD_WAITING_FOR_BOT = """
import asyncio, sys, time
from pathlib import Path
import core.gallery_build as gallery_build

bot_done = Path(sys.argv.pop(1))
photo_count = int(sys.argv.pop(1))
gallery_build.BATCH_SIZE = 1
store_result = gallery_build._store_result
stored = 0

async def store_last_after_bot(*args, **kwargs):
    global stored
    stored += 1
    if stored == photo_count:
        deadline = time.monotonic() + 300
        while not bot_done.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    await store_result(*args, **kwargs)

gallery_build._store_result = store_last_after_bot
from cli.main import main
sys.exit(main())
"""

# Enrolls photos as the bot's enroll handler does, once the build has committed a photo,
# and writes its result, or the error, to the file named by argv[3].
BOT_ENROLLING = """
import asyncio, contextlib, json, sqlite3, sys, time, traceback
from pathlib import Path
from core.images import load_image
from core.service import FaceService
from core.settings import Settings

db, cache_dir, result_file = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
enrollments, chat_id = json.loads(sys.argv[4]), int(sys.argv[5])

def build_has_committed():
    with contextlib.suppress(sqlite3.OperationalError):  # the file or its tables may not exist yet
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as connection:
            return connection.execute("SELECT count(*) FROM images").fetchone()[0] > 0
    return False

async def enroll_all():
    settings = Settings(db_path=db, cache_dir=cache_dir, torch_threads=1)
    async with FaceService.from_settings(settings) as service:
        deadline = time.monotonic() + 300
        while not build_has_committed() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        results = []
        for name, path, owner_id in enrollments:
            data = Path(path).read_bytes()
            image = load_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                               label=Path(path).name)
            result = await service.enroll(name, image, source="telegram", owner_id=owner_id, chat_id=chat_id)
            results.append({"person_id": result.person_id, "template_ids": list(result.template_ids)})
        return results

try:
    result = {"enrolled": asyncio.run(enroll_all())}
except BaseException:
    result = {"error": traceback.format_exc()}
result_file.write_text(json.dumps(result))
sys.exit(0 if "enrolled" in result else 1)
"""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_only(db: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True))


def image_rows(db: Path) -> list[tuple[str, str, str, int | None, int]]:
    """Return (sha256, person name, source, owner id, template count) for every image row."""
    with read_only(db) as connection:
        return connection.execute(
            """
            SELECT images.sha256, people.name, people.source, people.owner_id,
                (SELECT count(*) FROM templates WHERE templates.image_id = images.id)
            FROM images JOIN people ON people.id = images.person_id
            ORDER BY images.id
            """
        ).fetchall()


def integrity(db: Path) -> list[tuple[str]]:
    with read_only(db) as connection:
        return connection.execute("PRAGMA integrity_check").fetchall()


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.mark.datasets
def test_bot_enrolls_during_gallery_build(tmp_path: Path, datasets_dir: Path, model_cache_dir: Path) -> None:
    root = tmp_path / "photos"
    dataset_photos = link_lfw_tree(root, datasets_dir, DATASET_PEOPLE, DATASET_NUMBERS)
    bot_photos = [lfw_photo(datasets_dir, folder, number) for _, folder, number, _ in BOT_ENROLLMENTS]
    db = tmp_path / "shared.sqlite3"
    bot_result = tmp_path / "bot-result.json"
    environment = cli_environment(db, model_cache_dir)
    enrollments = [
        (name, str(photo), owner_id) for (name, _, _, owner_id), photo in zip(BOT_ENROLLMENTS, bot_photos, strict=True)
    ]

    build_arguments = [str(bot_result), str(len(dataset_photos)), "gallery", "build", "--json", str(root)]
    bot_arguments = [str(db), str(model_cache_dir), str(bot_result), json.dumps(enrollments), str(BOT_CHAT_ID)]
    build = subprocess.Popen(
        [sys.executable, "-c", BUILD_WAITING_FOR_BOT, *build_arguments],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    bot = subprocess.Popen(
        [sys.executable, "-c", BOT_ENROLLING, *bot_arguments],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        build_stdout, build_stderr = build.communicate(timeout=600)
        _, bot_stderr = bot.communicate(timeout=600)
    finally:
        stop(build)
        stop(bot)
    bot_outcome = json.loads(bot_result.read_text())

    assert bot.returncode == 0, bot_outcome.get("error", bot_stderr)
    assert build.returncode == 0, build_stderr
    assert "database is locked" not in build_stderr + bot_stderr
    assert json.loads(build_stdout)["enrolled"] == len(dataset_photos)
    assert len(bot_outcome["enrolled"]) == len(BOT_ENROLLMENTS)

    expected_dataset = [
        (sha256_of(photo), photo.parent.name.replace("_", " "), "dataset", None) for photo in dataset_photos
    ]
    expected_bot = [
        (sha256_of(photo), name, "telegram", owner_id)
        for (name, _, _, owner_id), photo in zip(BOT_ENROLLMENTS, bot_photos, strict=True)
    ]
    expected = sorted(expected_dataset + expected_bot)
    rows = image_rows(db)
    assert sorted(row[:4] for row in rows) == expected  # each photo once, under its writer's person
    assert {row[4] for row in rows} == {TEMPLATES_PER_PHOTO}
    with read_only(db) as connection:
        assert connection.execute("SELECT count(*) FROM templates").fetchone()[0] == len(rows) * TEMPLATES_PER_PHOTO
        bot_template_ids = {row[0] for row in connection.execute("SELECT id FROM templates WHERE chat_id IS NOT NULL")}
    assert bot_template_ids == {
        template_id for enrolled in bot_outcome["enrolled"] for template_id in enrolled["template_ids"]
    }
    assert integrity(db) == [("ok",)]


# Storage level: several processes, no models, as many write transactions as they can issue.

STORE_WRITER = """
import asyncio, sys, time
from pathlib import Path
import numpy as np
from core.storage import ImageRecord, NewTemplate, SqliteGalleryStore

db, writer, count, start_file = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])

async def write_all():
    while not start_file.exists():
        time.sleep(0.005)
    async with SqliteGalleryStore(db) as store:
        for index in range(count):
            embedding = np.zeros(8, dtype=np.float32)
            embedding[index % 8] = 1.0
            templates = [
                NewTemplate(embedding=embedding, box=(0.0, 0.0, 10.0, 10.0), detection_probability=0.99),
                NewTemplate(embedding=embedding, box=(0.0, 0.0, 10.0, 10.0), detection_probability=0.99,
                            kind="synthetic", parent_index=0),
            ]
            image = ImageRecord(sha256=f"{writer:032x}{index:032x}", path=None, width=10, height=10)
            await store.enroll(person_name=f"writer {writer} person {index % 5}", source="cli",
                               model_id="test-model", image=image, templates=templates)
            if index % 10 == 0:
                await store.list_people(model_id="test-model")

asyncio.run(write_all())
"""

WRITERS = 4
ENROLLMENTS_PER_WRITER = 150


def test_parallel_writers_on_new_database(tmp_path: Path) -> None:
    db = tmp_path / "contended.sqlite3"
    start_file = tmp_path / "start"
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", STORE_WRITER, str(db), str(writer), str(ENROLLMENTS_PER_WRITER), str(start_file)],
            cwd=tmp_path,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for writer in range(WRITERS)
    ]
    # Time to import their modules, so that most writers open the new file together. The
    # checks below hold however the writers are scheduled.
    time.sleep(1.0)
    start_file.touch()
    try:
        outputs = [writer.communicate(timeout=300) for writer in writers]
    finally:
        for writer in writers:
            stop(writer)

    for writer, (_, stderr) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, stderr
    with read_only(db) as connection:
        image_hashes = [row[0] for row in connection.execute("SELECT sha256 FROM images")]
        people = connection.execute("SELECT count(*) FROM people").fetchone()[0]
        templates_per_image = set(connection.execute("SELECT count(*) FROM templates GROUP BY image_id").fetchall())
        schema_version = connection.execute("PRAGMA user_version").fetchone()[0]
    expected_hashes = {
        f"{writer:032x}{index:032x}" for writer in range(WRITERS) for index in range(ENROLLMENTS_PER_WRITER)
    }
    assert len(image_hashes) == len(expected_hashes)
    assert set(image_hashes) == expected_hashes
    assert people == WRITERS * 5
    assert templates_per_image == {(2,)}
    assert schema_version == SCHEMA_VERSION
    assert integrity(db) == [("ok",)]


# Two builds into one gallery: the second fails at once instead of enrolling every photo again.


def test_second_build_fails_while_first_runs(tmp_path: Path, settings: Settings, pipeline: FacePipeline) -> None:
    root = tmp_path / "photos"
    write_grey_png(root / "Grey_Wall" / "wall.png")

    with exclusive_build(settings.db_path), pytest.raises(StorageError) as raised:
        build(settings, pipeline, root)
    after_release = build(settings, pipeline, root)

    assert str(raised.value) == (
        f"another `maskid gallery build` is writing gallery {settings.db_path} "
        f"(it holds {settings.db_path}.build-lock); run this build again when that one has finished"
    )
    assert after_release.no_face == 1

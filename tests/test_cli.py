"""End-to-end tests of the ``maskid`` command line.

Cases about what a user sees (exit status, stdout, stderr, the database file) run
``python -m cli`` in a subprocess with its own database and the session's model cache.
Each such process loads the models again, which takes several seconds on 2 CPU cores,
so cases that only vary the input call ``cli.main.main`` in-process with the session's
loaded pipeline instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_environment import CliRun, MaskidRunner, cli_environment, in_process_runner
from PIL import Image

from cli.main import main
from core.gallery_build import build_gallery
from core.pipeline import FacePipeline
from core.service import FaceService
from core.settings import Settings
from core.siamese.backbone import SiameseBackbone
from core.storage import SqliteGalleryStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("gallery", "enroll", "identify", "verify", "people", "remove", "mask", "eval", "calibrate", "train")

# The module's gallery enrolls photos 1-3 of these LFW people; photo 4 is held out as a probe.
ENROLLED = ("Alan_Greenspan", "Angela_Merkel", "Al_Sharpton")
HELD_OUT = 4
STRANGER = ("Adrien_Brody", 1)  # not in the gallery
# Each enrolled photo stores its own template and its synthetic-mask copies.
TEMPLATES_PER_PHOTO = 1 + Settings().synthetic_masks

# Two folds in the pairs.txt order: a block of same-person pairs, then a block of different-person pairs.
PAIRS = (
    ("Alan_Greenspan", 1, 2),
    ("Angela_Merkel", 1, 2),
    ("Alan_Greenspan", 1, "Angela_Merkel", 1),
    ("Al_Sharpton", 1, "Albert_Costa", 1),
    ("Al_Sharpton", 1, 2),
    ("Albert_Costa", 1, 2),
    ("Alan_Greenspan", 2, "Al_Sharpton", 2),
    ("Angela_Merkel", 2, "Albert_Costa", 2),
)

BAD_INPUTS = ("text-file", "empty-file", "truncated-jpeg")


# Photos, trees and databases.


def lfw_photo(datasets_dir: Path, folder: str, number: int) -> Path:
    return datasets_dir / "lfw" / folder / f"{folder}_{number:04d}.jpg"


def link_lfw_tree(root: Path, datasets_dir: Path, folders: tuple[str, ...], numbers: tuple[int, ...]) -> None:
    """Link LFW photos into ``root`` in the LFW layout ``Name/Name_0001.jpg``."""
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for number in numbers:
            photo = lfw_photo(datasets_dir, folder, number)
            (root / folder / photo.name).symlink_to(photo)


def write_grey_png(path: Path) -> Path:
    """Write a plain grey 200x200 PNG: a valid image with no face in it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (200, 200), (128, 128, 128)).save(path)
    return path


def write_bad_input(kind: str, folder: Path, datasets_dir: Path) -> Path:
    """Write a file that is not a decodable image: text, empty, or the first half of a real JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "text-file":
        path = folder / "notes.jpg"
        path.write_text("these are notes, not a photo\n")
    elif kind == "empty-file":
        path = folder / "empty.jpg"
        path.write_bytes(b"")
    elif kind == "truncated-jpeg":
        path = folder / "truncated.jpg"
        data = lfw_photo(datasets_dir, "Alan_Greenspan", 1).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        raise ValueError(f"unknown bad input kind {kind!r}")
    return path


def write_pairs_file(path: Path) -> Path:
    path.write_text("".join("\t".join(str(field) for field in pair) + "\n" for pair in PAIRS))
    return path


def read_only(db: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True))


def count_rows(db: Path, table: str) -> int:
    with read_only(db) as connection:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def person_names(db: Path) -> set[str]:
    with read_only(db) as connection:
        return {row[0] for row in connection.execute("SELECT name FROM people")}


def database_digest(db: Path) -> str:
    """Return the sha256 of an SQL dump of ``db``: schema and every row."""
    with read_only(db) as connection:
        return hashlib.sha256("\n".join(connection.iterdump()).encode()).hexdigest()


def assert_one_line_error(run: CliRun) -> None:
    assert run.exit_code != 0
    assert run.stderr.startswith("maskid: error: "), run.stderr
    assert len(run.stderr.splitlines()) == 1, run.stderr
    assert "Traceback" not in run.stderr


# Fixtures.


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Database file of the test's ``maskid`` runs; it does not exist until a command or fixture creates it."""
    return tmp_path / "gallery.sqlite3"


@pytest.fixture
def maskid(tmp_path: Path, db_path: Path, model_cache_dir: Path) -> MaskidRunner:
    """Run ``python -m cli ARGS`` in a subprocess, in ``tmp_path``, against ``db_path``."""
    environment = cli_environment(db_path, model_cache_dir)

    def run(*args: object) -> CliRun:
        completed = subprocess.run(
            [sys.executable, "-m", "cli", *map(str, args)],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        return CliRun(completed.returncode, completed.stdout, completed.stderr)

    return run


@pytest.fixture
def maskid_in_process(
    tmp_path: Path,
    db_path: Path,
    model_cache_dir: Path,
    pipeline: FacePipeline,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> MaskidRunner:
    """Run ``cli.main.main(ARGS)`` in this process with the session pipeline, against ``db_path``."""
    return in_process_runner(db_path, model_cache_dir, tmp_path, pipeline, monkeypatch, capsys)


@pytest.fixture(scope="module")
def enrolled_gallery(
    tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path, pipeline: FacePipeline, model_cache_dir: Path
) -> Path:
    """A gallery of photos 1-3 of each ENROLLED person, built once per module; tests use copies."""
    folder = tmp_path_factory.mktemp("enrolled-gallery")
    link_lfw_tree(folder / "photos", datasets_dir, ENROLLED, (1, 2, 3))
    settings = Settings(db_path=folder / "gallery.sqlite3", cache_dir=model_cache_dir)

    async def build() -> None:
        async with FaceService(settings, SqliteGalleryStore.from_settings(settings), pipeline) as service:
            await build_gallery(service, folder / "photos", show_progress=False)

    asyncio.run(build())
    return settings.db_path


@pytest.fixture
def gallery_db(enrolled_gallery: Path, db_path: Path) -> Path:
    """A private copy of the module's enrolled gallery at ``db_path``."""
    with (
        contextlib.closing(sqlite3.connect(enrolled_gallery)) as source,
        contextlib.closing(sqlite3.connect(db_path)) as target,
    ):
        source.backup(target)
    return db_path


# Help and argument errors.


def test_help_lists_every_command(maskid: MaskidRunner) -> None:
    run = maskid("--help")

    assert run.exit_code == 0
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", run.stdout, re.MULTILINE), f"{command} missing from --help"


def test_eval_missing_pairs_file(maskid: MaskidRunner, tmp_path: Path) -> None:
    run = maskid("eval", "lfw-pairs", tmp_path / "missing-pairs.txt", tmp_path)

    assert_one_line_error(run)
    assert "missing-pairs.txt not found" in run.stderr


def test_gallery_build_missing_folder(maskid: MaskidRunner, tmp_path: Path) -> None:
    run = maskid("gallery", "build", tmp_path / "no-such-folder")

    assert_one_line_error(run)
    assert "no-such-folder not found" in run.stderr


@pytest.mark.datasets
def test_identify_top_below_one(capsys: pytest.CaptureFixture[str], datasets_dir: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["identify", "--top", "0", str(lfw_photo(datasets_dir, "Alan_Greenspan", HELD_OUT))])

    assert exit_info.value.code == 2
    assert "--top: must be at least 1, got 0" in capsys.readouterr().err


# gallery build.


@pytest.mark.datasets
def test_gallery_build_then_rerun(maskid: MaskidRunner, tmp_path: Path, db_path: Path, datasets_dir: Path) -> None:
    root = tmp_path / "photos"
    link_lfw_tree(root, datasets_dir, ENROLLED, (1, 2, 3))

    first = maskid("gallery", "build", root)

    assert first.exit_code == 0, first.stderr
    assert f"3 people from {root}" in first.stdout
    assert re.search(r"enrolled now:\s+9 photos", first.stdout)
    assert re.search(r"already present:\s+0 photos", first.stdout)
    assert count_rows(db_path, "templates") == 9 * TEMPLATES_PER_PHOTO
    assert count_rows(db_path, "images") == 9

    second = maskid("gallery", "build", "--json", root)

    assert second.exit_code == 0, second.stderr
    assert second.json() == {
        "database": str(db_path),
        "people": 3,
        "enrolled": 0,
        "already_known": 9,
        "no_face": 0,
        "no_face_paths": [],
        "skipped": [],
    }
    assert count_rows(db_path, "templates") == 9 * TEMPLATES_PER_PHOTO
    assert count_rows(db_path, "images") == 9
    assert count_rows(db_path, "people") == 3


@pytest.mark.datasets
def test_gallery_build_reports_skipped_files(
    maskid: MaskidRunner, tmp_path: Path, db_path: Path, datasets_dir: Path
) -> None:
    root = tmp_path / "photos"
    link_lfw_tree(root, datasets_dir, ("Alan_Greenspan",), (1, 2))
    unicode_person = root / "Zoë_Ångström"
    unicode_person.mkdir()
    (unicode_person / "Zoë_0001.jpg").write_bytes(lfw_photo(datasets_dir, "Angela_Merkel", 1).read_bytes())
    (root / "Empty_Person").mkdir()
    person_dir = root / "Alan_Greenspan"
    (person_dir / "notes.txt").write_text("not a photo")
    (person_dir / "loop").symlink_to("..")
    write_bad_input("truncated-jpeg", person_dir, datasets_dir)
    (person_dir / "dangling.jpg").symlink_to(tmp_path / "deleted.jpg")
    expected_reasons = {
        person_dir / "notes.txt": "not an image file name",
        person_dir / "truncated.jpg": "truncated or corrupt JPEG",
        person_dir / "dangling.jpg": "file not found",
        person_dir / "loop": "symbolic link to a folder, not followed",
    }

    run = maskid("gallery", "build", root)
    skipped_lines = [line.strip() for line in run.stdout.splitlines() if line.startswith("    ")]

    assert run.exit_code == 0, run.stderr
    assert f"2 people from {root}" in run.stdout
    assert re.search(r"enrolled now:\s+3 photos", run.stdout)
    assert re.search(r"skipped:\s+4 files", run.stdout)
    for path, reason in expected_reasons.items():
        assert any(str(path) in line and reason in line for line in skipped_lines), (path, skipped_lines)
    assert person_names(db_path) == {"Alan Greenspan", "Zoë Ångström"}
    assert count_rows(db_path, "images") == 3


@pytest.mark.datasets
def test_gallery_build_nothing_enrollable_fails(
    maskid_in_process: MaskidRunner, tmp_path: Path, datasets_dir: Path
) -> None:
    root = tmp_path / "photos"
    write_grey_png(root / "Grey_Wall" / "wall.png")
    write_bad_input("truncated-jpeg", root / "Grey_Wall", datasets_dir)
    (root / "Grey_Wall" / "notes.txt").write_text("not a photo")

    run = maskid_in_process("gallery", "build", "--json", root)

    assert run.exit_code != 0
    assert run.json()["enrolled"] == 0
    assert run.json()["no_face"] == 1
    assert run.json()["no_face_paths"] == [str(root / "Grey_Wall" / "wall.png")]
    assert len(run.json()["skipped"]) == 2


def test_gallery_build_photo_folder_hints_parent(maskid_in_process: MaskidRunner, tmp_path: Path) -> None:
    person = tmp_path / "Grey_Wall"
    write_grey_png(person / "one.png")
    write_grey_png(person / "two.png")

    run = maskid_in_process("gallery", "build", person)

    assert run.exit_code == 1
    assert f"0 people from {person}" in run.stdout
    assert "skipped:         2 files" in run.stdout
    assert f"{person} holds photos directly; pass the folder above it" in run.stdout


def test_gallery_build_rerun_nothing_enrollable_fails(maskid_in_process: MaskidRunner, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_grey_png(root / "Grey_Wall" / "wall.png")
    maskid_in_process("gallery", "build", root)

    rerun = maskid_in_process("gallery", "build", root)

    assert rerun.exit_code != 0


# identify.


@pytest.mark.datasets
def test_identify_names_enrolled_and_unknown(maskid: MaskidRunner, gallery_db: Path, datasets_dir: Path) -> None:
    enrolled_probe = lfw_photo(datasets_dir, "Alan_Greenspan", HELD_OUT)
    stranger_probe = lfw_photo(datasets_dir, *STRANGER)

    run = maskid("identify", enrolled_probe, stranger_probe)
    lines = run.stdout.splitlines()

    assert run.exit_code == 0, run.stderr
    assert len(lines) == 2
    assert re.match(rf"{re.escape(str(enrolled_probe))} face 1: Alan Greenspan \(similarity 0\.\d{{3}}\)", lines[0])
    assert re.match(rf"{re.escape(str(stranger_probe))} face 1: unknown \(best .+ < threshold 0\.\d{{3}}\)", lines[1])


@pytest.mark.datasets
@pytest.mark.parametrize("top", [1, 3], ids=["top-1", "top-3"])
def test_identify_json(maskid_in_process: MaskidRunner, gallery_db: Path, datasets_dir: Path, top: int) -> None:
    probe = lfw_photo(datasets_dir, "Angela_Merkel", HELD_OUT)

    run = maskid_in_process("identify", "--json", "--top", top, probe)
    results = run.json()
    face = results[0]["faces"][0]

    assert run.exit_code == 0
    assert [result["image"] for result in results] == [str(probe)]
    assert len(results[0]["faces"]) == 1
    assert len(face["box"]) == 4
    assert face["name"] == "Angela Merkel"
    assert face["similarity"] >= face["threshold"]
    assert len(face["candidates"]) == top
    assert face["candidates"][0]["name"] == "Angela Merkel"
    assert face["candidates"][0]["similarity"] == face["similarity"]


@pytest.mark.datasets
def test_identify_json_unknown(maskid_in_process: MaskidRunner, gallery_db: Path, datasets_dir: Path) -> None:
    run = maskid_in_process("identify", "--json", lfw_photo(datasets_dir, *STRANGER))
    face = run.json()[0]["faces"][0]

    assert run.exit_code == 0
    assert face["name"] is None
    assert face["similarity"] is None
    assert face["candidates"][0]["similarity"] < face["threshold"]


@pytest.mark.datasets
def test_identify_no_face_photo(maskid_in_process: MaskidRunner, gallery_db: Path, tmp_path: Path) -> None:
    photo = write_grey_png(tmp_path / "wall.png")
    before = database_digest(gallery_db)

    run = maskid_in_process("identify", photo)

    assert_one_line_error(run)
    assert f"'{photo}': no face found" in run.stderr
    assert database_digest(gallery_db) == before


# enroll, people and remove.


@pytest.mark.datasets
def test_enroll_people_remove(
    maskid: MaskidRunner, maskid_in_process: MaskidRunner, db_path: Path, datasets_dir: Path
) -> None:
    photos = [lfw_photo(datasets_dir, "Alan_Greenspan", number) for number in (1, 2)]

    enrolled = maskid("enroll", "Jane_Doe", *photos)  # underscores become spaces, as in gallery build

    assert enrolled.exit_code == 0, enrolled.stderr
    assert enrolled.stdout.splitlines() == [f"{photo}: enrolled as 'Jane Doe'" for photo in photos]
    assert count_rows(db_path, "templates") == 2 * TEMPLATES_PER_PHOTO

    listed = maskid("people")

    assert listed.exit_code == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        "name\tsource (dataset, cli or telegram)\tphotos\ttemplates",
        f"Jane Doe\tcli\t2 photos\t{2 * TEMPLATES_PER_PHOTO} templates",
        f"1 person in {db_path}",
    ]

    listed_json = maskid_in_process("people", "--json")
    people = listed_json.json()

    assert listed_json.exit_code == 0
    assert [(person["name"], person["source"], person["images"], person["templates"]) for person in people] == [
        ("Jane Doe", "cli", 2, 2 * TEMPLATES_PER_PHOTO)
    ]

    misspelt = maskid_in_process("remove", "jane_doe")

    assert misspelt.exit_code == 1
    assert "no person named 'jane_doe' in the gallery; did you mean 'Jane Doe'?" in misspelt.stderr

    removed = maskid_in_process("remove", "Jane Doe")

    assert removed.exit_code == 0
    assert removed.stdout.strip() == f"removed 'Jane Doe' (cli): 2 photos, {2 * TEMPLATES_PER_PHOTO} templates"

    after = maskid_in_process("people")

    assert after.exit_code == 0
    assert "Jane Doe" not in after.stdout
    assert f"0 people in {db_path}" in after.stdout
    assert count_rows(db_path, "templates") == 0

    removed_again = maskid("remove", "Jane Doe")

    assert_one_line_error(removed_again)
    assert "no person named 'Jane Doe'" in removed_again.stderr


@pytest.mark.datasets
@pytest.mark.parametrize("command", ["enroll", "identify"])
@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_rejected(
    maskid: MaskidRunner, gallery_db: Path, tmp_path: Path, datasets_dir: Path, kind: str, command: str
) -> None:
    photo = write_bad_input(kind, tmp_path / "inputs", datasets_dir)
    arguments = ("enroll", "Bob", photo) if command == "enroll" else ("identify", photo)
    before = database_digest(gallery_db)

    run = maskid(*arguments)

    assert_one_line_error(run)
    assert photo.name in run.stderr
    assert database_digest(gallery_db) == before


@pytest.mark.datasets
@pytest.mark.datasets
def test_enroll_notes_photo_of_another_person(
    maskid_in_process: MaskidRunner, gallery_db: Path, datasets_dir: Path
) -> None:
    photo = lfw_photo(datasets_dir, "Albert_Costa", 1)
    assert maskid_in_process("enroll", "Albert Costa", photo).exit_code == 0

    run = maskid_in_process("enroll", "albert costa", photo)
    as_json = maskid_in_process("enroll", "--json", "Someone Else", photo).json()

    assert run.exit_code == 0, run.stderr
    assert "  note: the same photo is also enrolled as 'Albert Costa'" in run.stdout
    assert as_json[0]["also_enrolled_as"] == ["Albert Costa", "albert costa"]


def test_enroll_bad_input_creates_no_database(
    maskid: MaskidRunner, db_path: Path, tmp_path: Path, datasets_dir: Path
) -> None:
    photo = write_bad_input("truncated-jpeg", tmp_path / "inputs", datasets_dir)

    run = maskid("enroll", "Bob", photo)

    assert_one_line_error(run)
    assert not db_path.exists()


@pytest.mark.datasets
def test_enroll_no_face_rejected(maskid_in_process: MaskidRunner, gallery_db: Path, tmp_path: Path) -> None:
    photo = write_grey_png(tmp_path / "wall.png")
    before = database_digest(gallery_db)

    run = maskid_in_process("enroll", "Bob", photo)

    assert_one_line_error(run)
    assert f"'{photo}': no face found" in run.stderr
    assert database_digest(gallery_db) == before


@pytest.mark.datasets
@pytest.mark.parametrize("bad", ["truncated-jpeg", "no-face"])
def test_enroll_good_and_bad_stores_nothing(
    maskid_in_process: MaskidRunner, gallery_db: Path, tmp_path: Path, datasets_dir: Path, bad: str
) -> None:
    good = lfw_photo(datasets_dir, "Albert_Costa", 1)
    if bad == "no-face":
        bad_photo = write_grey_png(tmp_path / "wall.png")
    else:
        bad_photo = write_bad_input(bad, tmp_path / "inputs", datasets_dir)
    before = database_digest(gallery_db)

    run = maskid_in_process("enroll", "Albert Costa", good, bad_photo)

    assert_one_line_error(run)
    assert bad_photo.name in run.stderr
    assert "None of the 2 photos was stored" in run.stderr
    assert database_digest(gallery_db) == before


# verify.


@pytest.mark.datasets
@pytest.mark.parametrize(
    ("second", "verdict", "same"),
    [
        (("Alan_Greenspan", 2), "same person", True),
        (("Angela_Merkel", 1), "different people", False),
    ],
    ids=["same-person", "different-people"],
)
def test_verify(
    maskid_in_process: MaskidRunner,
    datasets_dir: Path,
    second: tuple[str, int],
    verdict: str,
    same: bool,
) -> None:
    first_photo = lfw_photo(datasets_dir, "Alan_Greenspan", 1)
    second_photo = lfw_photo(datasets_dir, *second)

    text = maskid_in_process("verify", first_photo, second_photo)
    as_json = maskid_in_process("verify", "--json", first_photo, second_photo)
    result = as_json.json()

    assert text.exit_code == 0
    assert re.fullmatch(rf"{verdict}: similarity -?[01]\.\d{{3}} \(threshold 0\.400\)\n", text.stdout)
    assert as_json.exit_code == 0
    assert result["same"] is same
    assert (result["similarity"] >= result["threshold"]) is same
    assert result["threshold"] == Settings().verify_threshold
    assert result["faces_found"] == [1, 1]
    assert len(result["boxes"]) == 2


@pytest.mark.datasets
def test_verify_masked_pair_uses_masked_threshold(maskid_in_process: MaskidRunner, datasets_dir: Path) -> None:
    masked = sorted((datasets_dir / "rof" / "masked" / "bill_gates").iterdir())[0]
    neutral = sorted((datasets_dir / "rof" / "neutral" / "bill_gates").iterdir())[0]

    text = maskid_in_process("verify", masked, neutral)
    result = maskid_in_process("verify", "--json", masked, neutral).json()

    assert text.exit_code == 0
    assert "(threshold 0.500, a masked face)" in text.stdout
    assert result["masked"] is True
    assert result["threshold"] == SiameseBackbone.masked_verify_threshold


@pytest.mark.datasets
def test_verify_names_main_face_of_group(maskid_in_process: MaskidRunner, tmp_path: Path, datasets_dir: Path) -> None:
    single = lfw_photo(datasets_dir, "Alan_Greenspan", 1)
    pair_photo = tmp_path / "two.png"
    left = np.asarray(Image.open(single).convert("RGB"))
    right = np.asarray(Image.open(lfw_photo(datasets_dir, "Angela_Merkel", 1)).convert("RGB"))
    Image.fromarray(np.concatenate([left, right], axis=1)).save(pair_photo)

    run = maskid_in_process("verify", single, pair_photo)

    assert run.exit_code == 0, run.stderr
    assert f"{pair_photo}: compared the main face of 2" in run.stdout


# eval lfw-pairs.


@pytest.mark.datasets
def test_eval_lfw_pairs_text(maskid: MaskidRunner, tmp_path: Path, datasets_dir: Path) -> None:
    pairs = write_pairs_file(tmp_path / "pairs.txt")

    run = maskid("eval", "lfw-pairs", pairs, datasets_dir / "lfw")

    assert run.exit_code == 0, run.stderr
    assert f"LFW pairs {pairs}: 8 pairs in 2 folds" in run.stdout
    assert re.search(r"^accuracy  \d\.\d{4} ± \d\.\d{4}$", run.stdout, re.MULTILINE)
    assert re.search(r"^threshold -?\d\.\d{3} \(cosine similarity", run.stdout, re.MULTILINE)


@pytest.mark.datasets
def test_eval_lfw_pairs_json(maskid_in_process: MaskidRunner, tmp_path: Path, datasets_dir: Path) -> None:
    pairs = write_pairs_file(tmp_path / "pairs.txt")

    run = maskid_in_process("eval", "lfw-pairs", "--json", pairs, datasets_dir / "lfw")
    result = run.json()

    assert run.exit_code == 0
    assert result["pairs"] == 8
    assert result["images"] == 8
    assert len(result["fold_accuracies"]) == 2
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["accuracy"] == pytest.approx(sum(result["fold_accuracies"]) / 2)
    assert -1.0 <= result["threshold"] <= 1.0
    assert result["unscored_pairs"] == 0


# Mistyped paths and settings.


def test_people_missing_database_rejected(maskid_in_process: MaskidRunner, db_path: Path) -> None:
    run = maskid_in_process("people")

    assert_one_line_error(run)
    assert f"gallery database {db_path} not found" in run.stderr
    assert not db_path.exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--threshold", "5", "--threshold is a cosine similarity in [-1, 1], got 5.0"),
        ("--threads", "-2", "--threads must be 0 (default) or positive, got -2"),
        ("--device", "gpu", "--device must be 'cpu' or 'cuda[:N]', got 'gpu'"),
    ],
    ids=["threshold", "threads", "device"],
)
def test_invalid_option_named_in_error(
    maskid_in_process: MaskidRunner, gallery_db: Path, option: str, value: str, message: str
) -> None:
    run = maskid_in_process(option, value, "people")

    assert_one_line_error(run)
    assert f"maskid: error: {message}" in run.stderr


def test_missing_env_file_rejected(maskid_in_process: MaskidRunner, tmp_path: Path) -> None:
    run = maskid_in_process("--env-file", tmp_path / "missing.env", "people")

    assert_one_line_error(run)
    assert "settings file" in run.stderr
    assert "not found" in run.stderr


def test_unknown_setting_logged(
    maskid_in_process: MaskidRunner, gallery_db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MASKID_THRESHOLD", "0.9")

    run = maskid_in_process("people")

    assert run.exit_code == 0
    assert "ignoring unknown setting MASKID_THRESHOLD" in caplog.text


@pytest.mark.datasets
def test_identify_bad_file_keeps_other_results(
    maskid_in_process: MaskidRunner, gallery_db: Path, tmp_path: Path, datasets_dir: Path
) -> None:
    good = lfw_photo(datasets_dir, "Alan_Greenspan", HELD_OUT)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")

    run = maskid_in_process("identify", good, bad)

    assert_one_line_error(run)
    assert "not a supported image" in run.stderr
    assert "Alan Greenspan" in run.stdout


# calibrate.


def stranger_photos(root: Path, datasets_dir: Path) -> Path:
    """Link two photos each of three people who are not in the test gallery into ``root``."""
    link_lfw_tree(root, datasets_dir, ("Adrien_Brody", "Amelie_Mauresmo", "Ari_Fleischer"), (1, 2))
    return root


@pytest.mark.datasets
def test_calibrate_stores_thresholds_that_identify_uses(
    maskid_in_process: MaskidRunner, gallery_db: Path, datasets_dir: Path, tmp_path: Path
) -> None:
    strangers = stranger_photos(tmp_path / "strangers", datasets_dir)
    # A folder named like an enrolled person is skipped: it would not show a stranger.
    link_lfw_tree(strangers, datasets_dir, ("Alan_Greenspan",), (5,))
    # Photos without a usable face are named in the output, not silently dropped.
    write_grey_png(strangers / "grey.png")
    (strangers / "notes.jpg").write_text("not a photo")

    run = maskid_in_process("calibrate", "--fpir", "0.2", strangers)
    as_json = maskid_in_process("calibrate", "--fpir", "0.2", "--json", strangers).json()
    identified = maskid_in_process("identify", "--json", lfw_photo(datasets_dir, *STRANGER)).json()

    assert run.exit_code == 0, run.stderr
    assert "8 used, 6 with a face, 1 skipped as enrolled people" in run.stdout
    assert "left out  2 files with no usable face:" in run.stdout
    assert f"  {strangers / 'grey.png'}: no face found" in run.stdout
    assert f"  {strangers / 'notes.jpg'}: not a supported image" in run.stdout
    assert re.search(
        r"^unmasked  6 faces, threshold 0\.\d{4} \(FPIR on them 0\.1667\); from under 100 faces it is noisy",
        run.stdout,
        re.MULTILINE,
    )
    assert "masked    0 faces, too few for this FPIR: threshold not changed" in run.stdout
    assert as_json["unmasked"] == pytest.approx(identified[0]["faces"][0]["threshold"])
    assert as_json["skipped_enrolled"] == 1
    assert sorted(Path(path).name for path in as_json["left_out"]) == ["grey.png", "notes.jpg"]


@pytest.mark.datasets
def test_calibrate_reset_restores_defaults(
    maskid_in_process: MaskidRunner, gallery_db: Path, datasets_dir: Path, tmp_path: Path
) -> None:
    strangers = stranger_photos(tmp_path / "strangers", datasets_dir)
    assert maskid_in_process("calibrate", "--fpir", "0.2", strangers).exit_code == 0

    reset = maskid_in_process("calibrate", "--reset")
    again = maskid_in_process("calibrate", "--reset", "--json").json()
    identified = maskid_in_process("identify", "--json", lfw_photo(datasets_dir, *STRANGER)).json()

    assert reset.exit_code == 0, reset.stderr
    assert "reset     removed the stored calibration" in reset.stdout
    assert re.search(
        r"^in use    unmasked 0\.5600 \(default\), masked 0\.\d{4} \(default\)$", reset.stdout, re.MULTILINE
    )
    assert again["removed"] is False
    assert identified[0]["faces"][0]["threshold"] == pytest.approx(0.56)


def test_calibrate_needs_folders_or_reset(maskid_in_process: MaskidRunner, tmp_path: Path) -> None:
    run = maskid_in_process("calibrate")

    assert run.exit_code == 1
    assert "missing DIR: pass at least one folder" in run.stderr


def test_calibrate_rejects_fpir_outside_zero_one(maskid_in_process: MaskidRunner, tmp_path: Path) -> None:
    run = maskid_in_process("calibrate", "--fpir", "1.5", tmp_path)

    assert run.exit_code == 1
    assert "--fpir must be between 0 and 1, got 1.5" in run.stderr


@pytest.mark.datasets
def test_identify_json_lists_the_bad_file(
    maskid_in_process: MaskidRunner, gallery_db: Path, tmp_path: Path, datasets_dir: Path
) -> None:
    good = lfw_photo(datasets_dir, "Alan_Greenspan", HELD_OUT)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")

    run = maskid_in_process("identify", "--json", good, bad)
    results = {item["image"]: item for item in run.json()}

    assert run.exit_code == 1
    assert results[str(bad)]["faces"] == []
    assert "not a supported image" in results[str(bad)]["error"]
    assert results[str(good)]["faces"][0]["name"] == "Alan Greenspan"

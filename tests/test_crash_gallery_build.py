"""Crash safety of ``maskid gallery build``: SIGKILL at many points, then a resumed build.

Each round runs the real command line in a subprocess, with one photo per model call so that
commits are spread over the run, and kills it with SIGKILL. One round kills it from inside an
enroll transaction, after the image row and one template row are written; the others kill it
at random points chosen by a seeded generator, from interpreter start-up to the middle of the
tree. After every kill the database must pass SQLite's integrity check and hold only whole
enrollments. A resumed build must then reach the same rows as an uninterrupted build.

Each cycle starts from a new database and ends with a resumed build. CI runs one cycle with
3 kills. ``pytest -m long tests/test_crash_gallery_build.py`` runs cycles until 24 random
kills have landed, and ``MASKID_CRASH_KILLS`` sets that number.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cli_environment import cli_environment
from test_gallery_build import LFW_PEOPLE, build, link_lfw_tree

from cli.main import main
from core.pipeline import FacePipeline
from core.settings import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEMPLATES_PER_PHOTO = 1 + Settings().synthetic_masks
SHORT_RANDOM_KILLS = 2
LONG_RANDOM_KILLS = int(os.environ.get("MASKID_CRASH_KILLS", "24"))
KILL_SEED = 20251205

# The real command line with one photo per model call. With a number as its first argument,
# it kills itself with SIGKILL inside the transaction of that enroll call (counted from 1),
# after the image row and the first template row are written and before the commit.
GALLERY_BUILD = """
import os, signal, sys
import core.gallery_build
import core.storage.sqlite as sqlite_store

core.gallery_build.BATCH_SIZE = 1
kill_in_enroll = int(sys.argv.pop(1))
insert_templates = sqlite_store._insert_templates
enroll_calls = 0

async def insert_then_maybe_die(connection, templates, **kwargs):
    global enroll_calls
    enroll_calls += 1
    if enroll_calls == kill_in_enroll:
        await insert_templates(connection, templates[:1], **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    return await insert_templates(connection, templates, **kwargs)

sqlite_store._insert_templates = insert_then_maybe_die
from cli.main import main
sys.exit(main())
"""


@dataclass(frozen=True)
class KillPoint:
    """Where a round kills the build: ``delay_s`` after it has committed ``new_commits`` more photos."""

    new_commits: int
    delay_s: float


@dataclass
class Kills:
    """Kills by where they landed: inside a transaction on purpose, or at a random point."""

    in_transaction: int = 0
    before_first_commit: int = 0
    after_a_commit: int = 0

    @property
    def random(self) -> int:
        return self.before_first_commit + self.after_a_commit

    def __add__(self, other: Kills) -> Kills:
        return Kills(
            self.in_transaction + other.in_transaction,
            self.before_first_commit + other.before_first_commit,
            self.after_a_commit + other.after_a_commit,
        )


def read_only(db: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True))


def committed_images(db: Path) -> int:
    """Count image rows, or return 0 while the file or its tables do not exist."""
    with contextlib.suppress(sqlite3.OperationalError), read_only(db) as connection:
        return connection.execute("SELECT count(*) FROM images").fetchone()[0]
    return 0


def assert_whole_enrollments(db: Path) -> None:
    """Check SQLite's integrity and that no person, image or template is left half enrolled."""
    with read_only(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        images_without_full_templates = connection.execute(
            """
            SELECT images.id, count(templates.id), sum(templates.kind = 'original')
            FROM images LEFT JOIN templates ON templates.image_id = images.id
            WHERE images.status = 'enrolled'
            GROUP BY images.id
            HAVING count(templates.id) != ? OR sum(templates.kind = 'original') != 1
            """,
            (TEMPLATES_PER_PHOTO,),
        ).fetchall()
        people_without_images = connection.execute(
            "SELECT id, name FROM people WHERE NOT EXISTS (SELECT 1 FROM images WHERE images.person_id = people.id)"
        ).fetchall()
        synthetic_with_foreign_parent = connection.execute(
            """
            SELECT child.id FROM templates AS child JOIN templates AS parent ON parent.id = child.parent_id
            WHERE child.kind = 'synthetic' AND (parent.kind != 'original' OR parent.image_id != child.image_id)
            """
        ).fetchall()
        duplicate_hashes = connection.execute(
            "SELECT sha256 FROM images GROUP BY model_id, sha256 HAVING count(*) > 1"
        ).fetchall()
    assert images_without_full_templates == []
    assert people_without_images == []
    assert synthetic_with_foreign_parent == []
    assert duplicate_hashes == []


def gallery_contents(db: Path) -> dict[str, tuple]:
    """Map each image's sha256 to its person, file facts and templates, without ids and timestamps."""
    contents: dict[str, tuple] = {}
    with read_only(db) as connection:
        images = connection.execute(
            """
            SELECT images.id, images.sha256, people.name, people.source, images.path, images.width,
                images.height, images.status, images.faces_found
            FROM images LEFT JOIN people ON people.id = images.person_id
            """
        ).fetchall()
        for image_id, sha256, *facts in images:
            templates = connection.execute(
                "SELECT kind, embedding, box_x1, box_y1, box_x2, box_y2 FROM templates WHERE image_id = ? ORDER BY id",
                (image_id,),
            ).fetchall()
            contents[sha256] = (tuple(facts), templates)
    return contents


def assert_same_contents(resumed: dict[str, tuple], reference: dict[str, tuple]) -> None:
    """Compare two galleries row by row, with a tolerance for descriptors, whose rounding depends on the batch size."""
    assert sorted(resumed) == sorted(reference)
    for sha256, (facts, templates) in resumed.items():
        reference_facts, reference_templates = reference[sha256]
        assert facts == reference_facts, sha256
        assert [row[0] for row in templates] == [row[0] for row in reference_templates], sha256
        for row, reference_row in zip(templates, reference_templates, strict=True):
            vector = np.frombuffer(row[1], dtype="<f4")
            reference_vector = np.frombuffer(reference_row[1], dtype="<f4")
            assert float(vector @ reference_vector) > 0.999, sha256
            assert np.allclose(row[2:], reference_row[2:], atol=0.5), sha256


def draw_kill_point(rng: random.Random) -> KillPoint:
    """Draw a kill point: a quarter in start-up (imports, model loading, migrations), the rest after 1-2 new commits.

    A photo takes at least 0.2 s on one CPU thread, so a delay under 0.15 s after a commit
    lands in the next photo: its model work, its transaction or the commit itself.
    """
    if rng.random() < 0.25:
        return KillPoint(new_commits=0, delay_s=rng.uniform(0.0, 2.5))
    return KillPoint(new_commits=rng.randint(1, 2), delay_s=rng.uniform(0.0, 0.15))


def start_build(root: Path, db: Path, cache_dir: Path, *, kill_in_enroll: int = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", GALLERY_BUILD, str(kill_in_enroll), "gallery", "build", str(root)],
        cwd=db.parent,
        env=cli_environment(db, cache_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_at(process: subprocess.Popen[bytes], db: Path, point: KillPoint) -> bool:
    """Send SIGKILL to ``process`` at ``point``, and return False if it exited first."""
    target = committed_images(db) + point.new_commits
    deadline = time.monotonic() + 300
    while committed_images(db) < target and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(point.delay_s)
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    return True


def run_kill_cycle(root: Path, db: Path, cache_dir: Path, photos: int, rng: random.Random, random_kills: int) -> Kills:
    """Build into the new database ``db``, killing the build once inside a transaction and then up to
    ``random_kills`` times at random while at least 4 photos are left."""
    kills = Kills()

    process = start_build(root, db, cache_dir, kill_in_enroll=2)
    assert process.wait(timeout=300) == -signal.SIGKILL, process.stderr.read().decode()
    kills.in_transaction += 1
    assert committed_images(db) == 1  # the second photo's image row was never committed
    assert_whole_enrollments(db)

    committed_before = committed_images(db)
    while kills.random < random_kills and photos - committed_before >= 4:
        process = start_build(root, db, cache_dir)
        try:
            killed = kill_at(process, db, draw_kill_point(rng))
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert killed or process.returncode == 0, process.stderr.read().decode()
        committed_now = committed_images(db)
        assert committed_now >= committed_before  # committed photos survive the kill
        if killed:
            kills.before_first_commit += committed_now == committed_before
            kills.after_a_commit += committed_now > committed_before
        committed_before = committed_now
        assert_whole_enrollments(db)
    return kills


def check_crash_and_resume(
    tmp_path: Path, settings: Settings, pipeline: FacePipeline, datasets_dir: Path, cache_dir: Path, random_kills: int
) -> Kills:
    """Run kill cycles, each on a new database and resumed to completion, until ``random_kills`` random kills."""
    root = tmp_path / "photos"
    photos = link_lfw_tree(root, datasets_dir, LFW_PEOPLE, (1, 2, 3))
    reference = build(settings, pipeline, root)  # the same tree, uninterrupted, into its own database
    assert reference.enrolled == len(photos)
    reference_contents = gallery_contents(settings.db_path)

    rng = random.Random(KILL_SEED)
    total = Kills()
    cycle = 0
    while total.random < random_kills:
        cycle += 1
        db = tmp_path / f"interrupted-{cycle}.sqlite3"
        kills = run_kill_cycle(root, db, cache_dir, len(photos), rng, random_kills - total.random)
        resumed = build(settings.replace(db_path=db), pipeline, root)

        assert resumed.enrolled + resumed.already_known == len(photos)
        assert resumed.skipped == []
        assert_whole_enrollments(db)
        assert_same_contents(gallery_contents(db), reference_contents)
        total = total + kills
    return total


@pytest.mark.datasets
def test_killed_build_resumes_to_same_gallery(
    tmp_path: Path, settings: Settings, pipeline: FacePipeline, datasets_dir: Path, model_cache_dir: Path
) -> None:
    kills = check_crash_and_resume(tmp_path, settings, pipeline, datasets_dir, model_cache_dir, SHORT_RANDOM_KILLS)

    assert kills.in_transaction >= 1  # one per cycle, and a fast start-up may leave too few photos for one cycle
    assert kills.random == SHORT_RANDOM_KILLS


@pytest.mark.long
@pytest.mark.datasets
def test_killed_build_resumes_to_same_gallery_long(
    tmp_path: Path, settings: Settings, pipeline: FacePipeline, datasets_dir: Path, model_cache_dir: Path
) -> None:
    kills = check_crash_and_resume(tmp_path, settings, pipeline, datasets_dir, model_cache_dir, LONG_RANDOM_KILLS)

    print(f"gallery build killed: {kills}")
    assert kills.random == LONG_RANDOM_KILLS


# Database folders that cannot hold the gallery: a one-line error, and nothing created.


@dataclass(frozen=True)
class CliRun:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(monkeypatch: pytest.MonkeyPatch, args: list[str], db: Path, cwd: Path) -> CliRun:
    """Run ``cli.main.main(args)`` in this process against ``db``, from ``cwd``."""
    for name in [name for name in os.environ if name.startswith("MASKID_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MASKID_DB", str(db))
    monkeypatch.chdir(cwd)
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        exit_code = main(args)
    return CliRun(exit_code, stdout.getvalue(), stderr.getvalue())


def run_cli_in_child(args: list[str], db: Path, cwd: Path, *, user_id: int | None = None) -> CliRun:
    """Run ``cli.main.main(args)`` in a forked child, as ``user_id`` when given, and return its output.

    The child reuses the modules this process has imported, so run the same command in this
    process first: a module imported on demand may lie where ``user_id`` cannot read it. The
    child reaches no model, because the gallery is opened, and fails, before the first photo
    is analysed.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 0
        try:
            os.close(read_end)
            if user_id is not None:
                os.setgroups([])
                os.setgid(user_id)
                os.setuid(user_id)
            os.chdir(cwd)
            for name in [name for name in os.environ if name.startswith("MASKID_")]:
                del os.environ[name]
            os.environ["MASKID_DB"] = str(db)
            stdout, stderr = io.StringIO(), io.StringIO()
            with redirect_stdout(stdout), redirect_stderr(stderr):
                exit_code = main(args)
            payload = [exit_code, stdout.getvalue(), stderr.getvalue()]
        except BaseException as exc:  # reported to the parent, which fails the test
            payload = [-1, "", f"child failed: {exc!r}"]
            status = 1
        with os.fdopen(write_end, "w") as pipe:
            json.dump(payload, pipe)
        os._exit(status)

    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        payload = json.load(pipe)
    os.waitpid(pid, 0)
    return CliRun(*payload)


def assert_one_line_error(run: CliRun, *fragments: str) -> None:
    assert run.exit_code == 1, run
    assert run.stderr.startswith("maskid: error: "), run.stderr
    assert len(run.stderr.splitlines()) == 1, run.stderr
    for fragment in fragments:
        assert fragment in run.stderr


def test_build_into_missing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "photos" / "Someone").mkdir(parents=True)
    db = tmp_path / "no-such-folder" / "gallery.sqlite3"

    run = run_cli(monkeypatch, ["gallery", "build", str(tmp_path / "photos")], db, tmp_path)

    assert_one_line_error(
        run, f"folder {db.parent} does not exist; create it or choose another file with --db or MASKID_DB"
    )
    assert not db.parent.exists()


def test_build_into_read_only_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root writes into any folder whatever its mode, so as root the child drops to "nobody".
    # The folder sits outside pytest's temporary tree, which only root may enter.
    user_id = 65534 if os.geteuid() == 0 else None
    (tmp_path / "photos" / "Someone").mkdir(parents=True)
    run_cli(monkeypatch, ["gallery", "build", str(tmp_path / "photos")], tmp_path / "missing" / "g.sqlite3", tmp_path)

    with tempfile.TemporaryDirectory(prefix="maskid-read-only-") as folder:
        base = Path(folder)
        base.chmod(0o755)
        (base / "photos" / "Someone").mkdir(parents=True)
        for path in (base / "photos", base / "photos" / "Someone"):
            path.chmod(0o755)
        read_only_folder = base / "gallery"
        read_only_folder.mkdir(mode=0o555)
        db = read_only_folder / "gallery.sqlite3"
        try:
            run = run_cli_in_child(["gallery", "build", str(base / "photos")], db, base, user_id=user_id)
        finally:
            read_only_folder.chmod(0o755)

        assert_one_line_error(
            run,
            f"folder {read_only_folder} is not writable",
            "make it writable or choose another file with --db or MASKID_DB",
        )
        assert list(read_only_folder.iterdir()) == []

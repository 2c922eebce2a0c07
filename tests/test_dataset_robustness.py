"""``maskid gallery build`` on dataset trees with hostile entries.

The trees hold unreadable files and folders, symbolic link loops at every level, empty person
folders, non-image files, a FIFO, Unicode and non-UTF-8 names, invalid person names and deep
nesting. The build must finish, report every skipped entry with its reason, enroll the rest,
and exit non-zero only when nothing could be enrolled. The command runs in this process with
the session's pipeline, because the cases vary only the tree.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_environment import MaskidRunner, in_process_runner
from test_gallery_build import lfw_photo

from core.errors import DatasetError
from core.gallery_build import BuildSummary, printable_path, scan_dataset
from core.pipeline import FacePipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RUNNING_AS_ROOT = os.geteuid() == 0
NESTING_DEPTH = 1100  # over Python's default recursion limit of 1000


@pytest.fixture
def maskid(
    tmp_path: Path,
    model_cache_dir: Path,
    pipeline: FacePipeline,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> MaskidRunner:
    """Run ``cli.main.main(ARGS)`` in this process with the session pipeline, against ``tmp_path/gallery.sqlite3``."""
    return in_process_runner(tmp_path / "gallery.sqlite3", model_cache_dir, tmp_path, pipeline, monkeypatch, capsys)


def make_folders(folder: bytes) -> None:
    """Create ``folder`` and its missing parents one at a time, because os.makedirs recurses once per level."""
    missing = []
    while not os.path.isdir(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    for path in reversed(missing):
        os.mkdir(path)


def copy_photo(datasets_dir: Path, folder: str, number: int, target: Path | bytes) -> None:
    """Copy an LFW photo to ``target``, a path or the bytes of a path that need not be valid UTF-8."""
    data = lfw_photo(datasets_dir, folder, number).read_bytes()
    target_bytes = os.fsencode(target)
    make_folders(os.path.dirname(target_bytes))
    with open(target_bytes, "wb") as file:
        file.write(data)


def person_names(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as connection:
        return {row[0] for row in connection.execute("SELECT name FROM people")}


def image_paths(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as connection:
        return {row[0] for row in connection.execute("SELECT path FROM images")}


def make_hostile_tree(root: Path, datasets_dir: Path) -> dict[str, str]:
    """Build a tree with four photos of three people to enroll and every kind of bad entry.

    Returns the expected reason for each skipped entry, keyed by its path as the build
    reports it (non-UTF-8 bytes escaped).
    """
    root.mkdir()
    alan = root / "Alan_Greenspan"
    copy_photo(datasets_dir, "Alan_Greenspan", 1, alan / "Alan_Greenspan_0001.jpg")
    copy_photo(datasets_dir, "Alan_Greenspan", 2, os.fsencode(alan) + b"/photo \xff.jpg")  # not valid UTF-8
    decomposed = unicodedata.normalize("NFD", "Zoë_Ångström")  # as macOS file systems store names
    copy_photo(datasets_dir, "Angela_Merkel", 1, root / decomposed / "фото 1.jpg")
    copy_photo(datasets_dir, "Al_Sharpton", 1, root / "Al_Sharpton" / ("n/" * NESTING_DEPTH) / "deep.jpg")
    (root / "Empty_Person").mkdir()

    (alan / "notes.txt").write_text("not a photo")
    (alan / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (alan / "text.jpg").write_text("a text file named like a photo")
    os.mkfifo(alan / "pipe.jpg")  # opening a FIFO for reading would block the build
    (alan / "loop").symlink_to("..")
    (alan / "self.jpg").symlink_to("self.jpg")
    (alan / "gone.jpg").symlink_to(root / "deleted.jpg")
    (root / "loop_to_root").symlink_to(".")
    (root / "loop_above_root").symlink_to("..")
    (root / "self_loop").symlink_to("self_loop")
    (root / "alias_of_alan").symlink_to("Alan_Greenspan")
    (root / "broken_person").symlink_to(root / "missing_folder")
    (root / "README.txt").write_text("photos of people, one folder each")
    (root / "___").mkdir()
    (root / ("x" * 201)).mkdir()
    non_utf8_person = os.fsencode(root) + b"/Jos\xe9_Latin1"
    copy_photo(datasets_dir, "Albert_Costa", 1, non_utf8_person + b"/Jos\xe9_0001.jpg")

    return {
        f"{alan}/notes.txt": "not an image file name",
        f"{alan}/.DS_Store": "not an image file name",
        f"{alan}/text.jpg": "not a supported image",
        f"{alan}/pipe.jpg": "not a regular file",
        f"{alan}/loop": "symbolic link to a folder, not followed",
        f"{alan}/self.jpg": "cannot read the file: Too many levels of symbolic links",
        f"{alan}/gone.jpg": "file not found",
        f"{root}/loop_to_root": "symbolic link loop",
        f"{root}/loop_above_root": "symbolic link loop",
        f"{root}/self_loop": "cannot follow the symbolic link: Too many levels of symbolic links",
        f"{root}/alias_of_alan": "inside the dataset folder and is scanned under its own name",
        f"{root}/broken_person": "broken symbolic link",
        f"{root}/README.txt": "not inside a person folder",
        f"{root}/___": "not a valid person name (person name must be a non-empty string",
        f"{root}/{'x' * 201}": "not a valid person name (person name must be at most 200 characters",
        f"{root}/Jos\\xe9_Latin1": "folder name is not valid UTF-8",
    }


def remove_folder_chain(top: Path) -> None:
    """Delete ``top`` and the chain of ``n`` folders below it, one level per step.

    Each step moves the next folder of the chain up beside ``top`` before deleting the
    current one, so every path stays short and nothing recurses.
    """
    spare_paths = (top.parent / "chain-a", top.parent / "chain-b")
    current = top
    for step in itertools.count():
        child = current / "n"
        following = spare_paths[step % 2] if child.is_dir() else None
        if following is not None:
            child.rename(following)
        for entry in os.scandir(current):
            os.unlink(entry.path)
        current.rmdir()
        if following is None:
            return
        current = following


@pytest.fixture
def hostile_tree(tmp_path: Path, datasets_dir: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """The tree of :func:`make_hostile_tree` and its expected skip reasons.

    The deep folder chain is deleted afterwards, because shutil.rmtree, which pytest uses to
    delete old temporary folders, recurses once per level in Python 3.11 and would fail on it.
    """
    root = tmp_path / "photos"
    expected = make_hostile_tree(root, datasets_dir)
    yield root, expected
    remove_folder_chain(root / "Al_Sharpton" / "n")


@pytest.mark.datasets
def test_hostile_tree_builds_and_reports(
    maskid: MaskidRunner, tmp_path: Path, hostile_tree: tuple[Path, dict[str, str]]
) -> None:
    root, expected = hostile_tree

    run = maskid("gallery", "build", "--json", root)
    skipped = {entry["path"]: entry["reason"] for entry in run.json()["skipped"]}

    assert run.exit_code == 0, run.stderr
    assert run.json()["enrolled"] == 4
    assert sorted(skipped) == sorted(expected)
    for path, reason in expected.items():
        assert reason in skipped[path], path
    assert person_names(tmp_path / "gallery.sqlite3") == {"Alan Greenspan", "Zoë Ångström", "Al Sharpton"}
    assert f"{root}/Alan_Greenspan/photo \\xff.jpg" in image_paths(tmp_path / "gallery.sqlite3")


@pytest.mark.datasets
def test_hostile_tree_text_output_is_utf8(maskid: MaskidRunner, hostile_tree: tuple[Path, dict[str, str]]) -> None:
    root, expected = hostile_tree
    maskid("gallery", "build", root)

    rerun = maskid("gallery", "build", root)

    assert rerun.exit_code == 0, rerun.stderr
    rerun.stdout.encode("utf-8")  # raises on a lone surrogate from a non-UTF-8 file name
    assert "already present: 4 photos" in rerun.stdout
    for path, reason in expected.items():
        assert any(path in line and reason in line for line in rerun.stdout.splitlines()), path


def test_nothing_enrollable_exits_non_zero(maskid: MaskidRunner, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "Nobody").mkdir(parents=True)
    (root / "Nobody" / "notes.txt").write_text("not a photo")
    (root / "Nobody" / "text.jpg").write_text("a text file named like a photo")
    (root / "Nobody" / "loop").symlink_to("..")
    (root / "loop").symlink_to(".")
    (root / "Empty_Person").mkdir()

    run = maskid("gallery", "build", "--json", root)

    assert run.exit_code == 1
    assert run.json()["enrolled"] == 0
    assert len(run.json()["skipped"]) == 4


@pytest.mark.skipif(RUNNING_AS_ROOT, reason="root reads files and folders whatever their mode")
@pytest.mark.datasets
def test_unreadable_entries_reported(maskid: MaskidRunner, tmp_path: Path, datasets_dir: Path) -> None:
    root = tmp_path / "photos"
    copy_photo(datasets_dir, "Alan_Greenspan", 1, root / "Alan_Greenspan" / "readable.jpg")
    copy_photo(datasets_dir, "Alan_Greenspan", 2, root / "Alan_Greenspan" / "private.jpg")
    copy_photo(datasets_dir, "Angela_Merkel", 1, root / "Angela_Merkel" / "hidden" / "a.jpg")
    (root / "Alan_Greenspan" / "private.jpg").chmod(0)
    (root / "Angela_Merkel" / "hidden").chmod(0)
    try:
        run = maskid("gallery", "build", "--json", root)
    finally:
        (root / "Angela_Merkel" / "hidden").chmod(0o755)
    skipped = {entry["path"]: entry["reason"] for entry in run.json()["skipped"]}

    assert run.exit_code == 0, run.stderr
    assert run.json()["enrolled"] == 1
    assert "permission denied" in skipped[str(root / "Alan_Greenspan" / "private.jpg")]
    assert "cannot list the folder: Permission denied" in skipped[str(root / "Angela_Merkel" / "hidden")]


def test_unlistable_folder_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same path as chmod 000 on a folder, for a run as root: os.scandir raises PermissionError.
    root = tmp_path / "photos"
    (root / "Someone" / "hidden").mkdir(parents=True)
    (root / "Someone" / "visible.jpg").write_bytes(b"scan does not read the bytes")
    real_scandir = os.scandir

    def scandir_denying_hidden(path: str | os.PathLike[str]) -> object:
        if Path(path).name == "hidden":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_denying_hidden)
    summary = BuildSummary()

    images = scan_dataset(root, summary)

    assert [image.path.name for image in images] == ["visible.jpg"]
    assert summary.skipped == [
        (root / "Someone" / "hidden", "cannot list the folder: Permission denied; make it readable for this user")
    ]


def test_unlistable_root_is_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "photos"
    root.mkdir()

    def deny(path: str | os.PathLike[str]) -> object:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", deny)

    with pytest.raises(DatasetError, match=r"cannot list dataset folder .*photos: Permission denied; make it readable"):
        scan_dataset(root)


def test_printable_path_escapes_only_invalid_bytes() -> None:
    assert printable_path(Path("Zoë/фото.jpg")) == Path("Zoë/фото.jpg")
    assert printable_path(Path(os.fsdecode(b"caf\xe9/x.jpg"))) == Path("caf\\xe9/x.jpg")

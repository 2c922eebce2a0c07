"""Access and abuse rules: who may delete or enroll what, what each chat can see, webhook secrets, SQL and logs.

The enrollment, deletion and chat-scope tests check outcomes against the database file
itself, through a separate ``sqlite3`` connection, so a rule that is kept only in memory fails
here. ``docs/reliability.md`` lists these rules, with the tests in other files that already
prove some of them.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from bot_harness import Harness, HarnessFactory, make_harness_factory
from fake_bot_api import TOKEN, group_chat, make_user, private_chat

from bot.bot_token import install_token_redaction
from bot.runner import _QUIET_LOGGERS, start_receiving
from cli.main import main
from core.images import load_image
from core.pipeline import Face, FacePipeline
from core.service import FaceService
from core.settings import Settings
from core.storage import ImageRecord, NewTemplate, SqliteGalleryStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]

ADMIN = make_user(500, "Root", "Admin")
ADA = make_user(601, "Ada", "Lovelace")
GRACE = make_user(602, "Grace", "Hopper")
GROUP = group_chat(-1001, "lab")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def lfw_bytes(datasets_dir: Path, folder: str, number: int = 1) -> bytes:
    return (datasets_dir / "lfw" / folder / f"{folder}_{number:04d}.jpg").read_bytes()


def query_rows(db_path: Path, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one read query on the database file through a new ``sqlite3`` connection."""
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        return connection.execute(sql, parameters).fetchall()


def table_counts(db_path: Path) -> dict[str, int]:
    return {table: query_rows(db_path, f"SELECT count(*) FROM {table}")[0][0] for table in ("people", "templates")}


@pytest.fixture
def harness_factory(tmp_path: Path, model_cache_dir: Path, pipeline: FacePipeline) -> HarnessFactory:
    """Return ``make(**settings_overrides)``, an async context manager that yields a started :class:`Harness`."""
    return make_harness_factory(tmp_path / "bot.sqlite3", model_cache_dir, pipeline, admin_ids=(ADMIN["id"],))


@pytest.fixture
async def harness(harness_factory: HarnessFactory) -> AsyncIterator[Harness]:
    async with harness_factory() as started:
        yield started


# /forget: only the user who asked may confirm.


async def test_forget_other_user_rejected(harness: Harness, datasets_dir: Path) -> None:
    await harness.state.consent.grant(ADA["id"])
    photo = harness.api.add_file(lfw_bytes(datasets_dir, "Angela_Merkel"))
    enrolled = await harness.send(GROUP, ADA, caption="/enroll", photo=photo)
    assert harness.reply(enrolled).text.startswith("Enrolled you as Ada Lovelace.")
    before = table_counts(harness.db_path)

    request = await harness.send(GROUP, ADA, text="/forget")
    question = harness.reply(request)
    yes, _ = question.button_data()
    await harness.press(GRACE, question.result, yes)
    await harness.press(ADMIN, question.result, yes)

    answers = [call.text for call in harness.api.calls("answerCallbackQuery")]
    assert answers == ["Only the user who sent /forget can answer this."] * 2
    assert harness.api.calls("editMessageText") == []
    assert table_counts(harness.db_path) == before
    assert query_rows(harness.db_path, "SELECT name FROM people WHERE owner_id = ?", (ADA["id"],)) == [
        ("Ada Lovelace",)
    ]
    assert await harness.state.consent.given_at(ADA["id"]) is not None

    # The owner's own press still works, so the rejections above were not an expired question.
    await harness.press(ADA, question.result, yes)

    assert harness.api.calls("editMessageText")[-1].text.startswith("Deleted:")
    assert query_rows(harness.db_path, "SELECT count(*) FROM people WHERE owner_id = ?", (ADA["id"],)) == [(0,)]


# Enrollment of other people and public figures: admins only.


@pytest.mark.parametrize(
    ("chat", "caption"),
    [
        (GROUP, "/enroll Grace Hopper"),
        (private_chat(ADA), "/enroll Grace Hopper"),
        (GROUP, "/celebrity Angela Merkel"),
        (private_chat(ADA), "/celebrity Angela Merkel"),
    ],
)
async def test_non_admin_enrolls_nothing(harness: Harness, datasets_dir: Path, chat: dict, caption: str) -> None:
    await harness.state.consent.grant(ADA["id"])
    photo = harness.api.add_file(lfw_bytes(datasets_dir, "Angela_Merkel"))

    message = await harness.send(chat, ADA, caption=caption, photo=photo)

    assert harness.reply(message).text.startswith("Only admins can")
    assert harness.api.calls("getFile") == []
    assert table_counts(harness.db_path) == {"people": 0, "templates": 0}


async def test_non_admin_reply_enroll_rejected(harness: Harness, datasets_dir: Path) -> None:
    await harness.state.consent.grant(ADA["id"])
    photo_message = await harness.send(GROUP, ADA, photo=harness.api.add_file(lfw_bytes(datasets_dir, "Angela_Merkel")))

    command = await harness.send(GROUP, ADA, text="/enroll Angela Merkel", reply_to=photo_message)
    celebrity = await harness.send(GROUP, ADA, text="/celebrity Angela Merkel", reply_to=photo_message)

    assert harness.reply(command).text.startswith("Only admins can enroll someone under another name.")
    assert harness.reply(celebrity).text == "Only admins can add public figures."
    assert harness.api.calls("getFile") == []
    assert table_counts(harness.db_path) == {"people": 0, "templates": 0}


async def test_admin_celebrity_is_public(harness: Harness, datasets_dir: Path) -> None:
    await harness.state.consent.grant(ADMIN["id"])
    photo = harness.api.add_file(lfw_bytes(datasets_dir, "Angela_Merkel"))

    message = await harness.send(GROUP, ADMIN, caption="/celebrity Angela Merkel", photo=photo)

    assert harness.reply(message).text.startswith("Added Angela Merkel as a public figure.")
    people = query_rows(harness.db_path, "SELECT name, source, owner_id FROM people")
    assert people == [("Angela Merkel", "dataset", None)]
    chats = query_rows(harness.db_path, "SELECT DISTINCT chat_id, owner_id FROM templates")
    assert chats == [(None, None)]


# Chat scoping of every query path, checked against the visibility rule run as SQL on the database.

VECTOR_SEED = 7
# (name, source, owner_id, chat_id, with synthetic templates)
SCOPED_PEOPLE = (
    ("Public Figure", "dataset", None, None, True),
    ("Ada Private", "telegram", 601, 601, True),
    ("Ada In Lab", "telegram", 601, -1001, False),
    ("Grace In Lab", "telegram", 602, -1001, True),
    ("Grace Elsewhere", "telegram", 602, -2002, True),
    ("Admin Pick", "telegram", 500, -2002, False),
    ("Cli Person", "cli", None, None, False),
)
# The real photo enrolled through FaceService.enroll: owner 602, in group -3003.
REAL_PERSON = ("Grace Real", 602, -3003)
CHATS = (601, 602, 500, 999, -1001, -2002, -3003, -4004)
OWNERS = (601, 602, 500, 999)


def visible_people(db_path: Path, model_id: str, chat_id: int, *, kind: str = "original") -> set[int]:
    """Return the people with a ``kind`` template visible in ``chat_id``, by the rule written in SQL.

    A template is visible in every chat when its chat_id is NULL, in the chat it was
    enrolled in, and in its owner's private chat (a private chat's id is the user's id,
    and only private chats have positive ids).
    """
    rows = query_rows(
        db_path,
        "SELECT DISTINCT templates.person_id FROM templates JOIN people ON people.id = templates.person_id"
        " WHERE templates.model_id = ? AND templates.kind = ?"
        " AND (templates.chat_id IS NULL OR templates.chat_id = ? OR (? > 0 AND people.owner_id = ?))",
        (model_id, kind, chat_id, chat_id, chat_id),
    )
    return {row[0] for row in rows}


def unit_vector(rng: np.random.Generator, dim: int) -> np.ndarray:
    vector = rng.standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


async def store_scoped_people(store: SqliteGalleryStore, model_id: str, dim: int) -> list[np.ndarray]:
    """Enroll :data:`SCOPED_PEOPLE` with random unit vectors, two photos each, and return one probe per person."""
    rng = np.random.default_rng(VECTOR_SEED)
    probes = []
    for number, (name, source, owner_id, chat_id, synthetic) in enumerate(SCOPED_PEOPLE):
        for photo in range(2):
            original = unit_vector(rng, dim)
            templates = [NewTemplate(original, (1.0, 2.0, 30.0, 40.0), 0.9)]
            if synthetic:
                masked = unit_vector(rng, dim)
                templates.append(NewTemplate(masked, (1.0, 2.0, 30.0, 40.0), 0.9, kind="synthetic", parent_index=0))
            sha256 = hashlib.sha256(f"{number}-{photo}".encode()).hexdigest()
            await store.enroll(
                person_name=name,
                source=source,
                model_id=model_id,
                image=ImageRecord(sha256=sha256, path=None, width=64, height=64),
                templates=templates,
                owner_id=owner_id,
                chat_id=chat_id,
            )
            probes.append(original)
    return probes


async def check_every_query_path(
    service: FaceService, db_path: Path, probes: list[np.ndarray], face: Face, image: Any
) -> None:
    model_id = service.model_id
    everyone = query_rows(db_path, "SELECT count(*) FROM people")[0][0]
    for chat_id in CHATS:
        expected = visible_people(db_path, model_id, chat_id)
        expected_synthetic = visible_people(db_path, model_id, chat_id, kind="synthetic")
        assert expected, f"chat {chat_id} sees nobody, so the check below proves nothing"
        for probe in probes:
            unmasked = {c.person_id for c in service.index.search(probe, k=everyone, chat_id=chat_id)}
            synthetic = {c.person_id for c in service.index.search(probe, k=everyone, chat_id=chat_id, synthetic=True)}
            masked = {c.person_id for c in service.index.search_masked(probe, k=everyone, chat_id=chat_id)}
            assert unmasked == expected, f"search from chat {chat_id}"
            assert synthetic == expected_synthetic, f"synthetic search from chat {chat_id}"
            assert masked == expected, f"search_masked from chat {chat_id}"

        probe_face = dataclasses.replace(face, embedding=probes[0])
        for masked_probe in (False, True):
            service.mask_status = lambda _face, masked_probe=masked_probe: (masked_probe, None)
            identification = await service.identify_face(probe_face, top_k=everyone, chat_id=chat_id)
            found = {ranked.person.id for ranked in identification.candidates}
            assert found == expected, f"identify_face (masked={masked_probe}) from chat {chat_id}"
        del service.mask_status

        [identification] = await service.identify(image, top_k=everyone, chat_id=chat_id)
        assert {ranked.person.id for ranked in identification.candidates} == expected, f"identify from {chat_id}"

    for owner_id in OWNERS:
        owned = {row[0] for row in query_rows(db_path, "SELECT id FROM people WHERE owner_id = ?", (owner_id,))}
        summaries = await service.user_summary(owner_id)
        assert {summary.person.id for summary in summaries} == owned, f"/me of user {owner_id}"


async def test_chat_scope_every_query_path(
    tmp_path: Path, model_cache_dir: Path, pipeline: FacePipeline, datasets_dir: Path
) -> None:
    settings = Settings(db_path=tmp_path / "scope.sqlite3", cache_dir=model_cache_dir)
    image = load_image(
        datasets_dir / "lfw/Angela_Merkel/Angela_Merkel_0001.jpg",
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
    )
    [face] = pipeline.analyze(image)
    async with SqliteGalleryStore.from_settings(settings) as store:
        probes = await store_scoped_people(store, pipeline.model_id, pipeline.embedder.embedding_dim)

    # Index loaded from the database at start, plus one enrollment added to it in memory.
    async with FaceService(settings, SqliteGalleryStore.from_settings(settings), pipeline) as service:
        name, owner_id, chat_id = REAL_PERSON
        await service.enroll(name, image, source="telegram", owner_id=owner_id, chat_id=chat_id, faces=[face])
        probes.append(face.embedding)
        await check_every_query_path(service, settings.db_path, probes, face, image)

    # The same database loaded again, so the real enrollment now comes from the stored rows.
    async with FaceService(settings, SqliteGalleryStore.from_settings(settings), pipeline) as service:
        await check_every_query_path(service, settings.db_path, probes, face, image)

    assert visible_people(settings.db_path, pipeline.model_id, -4004) == visible_people(
        settings.db_path, pipeline.model_id, 999
    ), "a chat without enrollments sees only the public people"


# Webhook mode: the secret token header.


@pytest.fixture
def unused_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_webhook_bad_secret_unprocessed(harness_factory: HarnessFactory, unused_tcp_port: int) -> None:
    secret = "test-secret_123"
    async with harness_factory(
        telegram_webhook_url="https://bot.example.invalid/maskid-hook",
        telegram_webhook_port=unused_tcp_port,
        telegram_webhook_secret=secret,
    ) as harness:
        mode = await start_receiving(harness.application, harness.state.settings)
        await harness.application.start()
        endpoint = f"http://127.0.0.1:{unused_tcp_port}/maskid-hook"
        bad_headers = [{}, {SECRET_HEADER: ""}, {SECRET_HEADER: "x"}, {SECRET_HEADER: secret.upper()}]
        bad_headers += [{SECRET_HEADER: secret[:-1]}, {SECRET_HEADER: secret + "4"}]
        try:
            rejected = []
            async with httpx.AsyncClient() as client:
                for headers in bad_headers:
                    message = harness.api.build_message(private_chat(ADA), ADA, text="/help")
                    update = harness.api.add_update({"message": message}, queue=False)
                    response = await client.post(endpoint, json=update, headers=headers)
                    rejected.append((headers, message, response.status_code))
                await asyncio.sleep(0.5)
                sent_while_rejecting = harness.api.calls("sendMessage")

                accepted_message = harness.api.build_message(private_chat(ADA), ADA, text="/help")
                update = harness.api.add_update({"message": accepted_message}, queue=False)
                accepted = await client.post(endpoint, json=update, headers={SECRET_HEADER: secret})
            for _ in range(200):
                if harness.replies(accepted_message):
                    break
                await asyncio.sleep(0.01)
        finally:
            await harness.application.updater.stop()
            await harness.application.stop()

        assert mode.startswith(f"webhook on 127.0.0.1:{unused_tcp_port}")
        for headers, message, status in rejected:
            assert status == 403, f"headers {headers}"
            assert harness.replies(message) == [], f"update with headers {headers} was processed"
        assert sent_while_rejecting == []
        assert accepted.status_code == 200
        assert "What I store" in harness.reply(accepted_message).text


# SQL text: values are bound as parameters, never formatted into the SQL.

SQL_CALLS = frozenset({"execute", "executemany", "execute_fetchall", "executescript"})
# Helpers that pass one argument straight to execute as the SQL text, by file: function name and
# argument position. Their call sites are checked instead of the parameter.
SQL_WRAPPERS = {"core/storage/sqlite.py": {"_count": 1}}
# Calls that return SQL text built from something other than a bound value, and why that is safe.
ALLOWED_SQL_BUILDERS = {
    # PRAGMA values cannot be bound, so the function formats int(version) into the text.
    "user_version_statement",
}
# Loop variables that run over SQL text defined as module constants.
ALLOWED_SQL_ITERABLES = {
    # Each migration's statements are string literals in core/storage/schema.py.
    "migration.statements",
}
# A name in UPPER_CASE (with an optional leading underscore) is a module constant, such as _PERSON_COLUMNS.
CONSTANT_NAME = re.compile(r"_?[A-Z][A-Z0-9_]*")


@dataclass
class SqlCheck:
    """The result of scanning source files: every SQL call site and the ones whose SQL text is unsafe."""

    calls: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)


def enclosing_functions(tree: ast.AST) -> dict[ast.AST, list[ast.AST]]:
    """Map every node to the function definitions that contain it, innermost last."""
    parents: dict[ast.AST, list[ast.AST]] = {}

    def visit(node: ast.AST, functions: list[ast.AST]) -> None:
        parents[node] = functions
        inner = [*functions, node] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else functions
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, [])
    return parents


def bindings(functions: list[ast.AST], name: str, wrappers: dict[str, int]) -> list[ast.AST | str]:
    """Return what ``name`` is bound to in ``functions``: assigned values, appended items, or a marker string."""
    found: list[ast.AST | str] = []
    for function in functions:
        if any(argument.arg == name for argument in ast.walk(function.args) if isinstance(argument, ast.arg)):
            found.append("wrapper parameter" if function.name in wrappers else "parameter")
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == name for target in node.targets
            ):
                found.append(node.value)
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and getattr(node.target, "id", None) == name:
                if node.value is not None:
                    found.append(node.value)
            elif isinstance(node, (ast.For, ast.AsyncFor)) and getattr(node.target, "id", None) == name:
                found.append(f"loop over {ast.unparse(node.iter)}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("append", "extend")
                and getattr(node.func.value, "id", None) == name
            ):
                found.extend(node.args)
    return found


def unsafe_parts(
    node: ast.AST, functions: list[ast.AST], wrappers: dict[str, int], seen: frozenset[str] = frozenset()
) -> list[str]:
    """Return the parts of the SQL expression ``node`` that may carry a value, or an empty list when it is safe."""

    def parts_of(child: ast.AST, names: frozenset[str] = seen) -> list[str]:
        return unsafe_parts(child, functions, wrappers, names)

    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return []
    if isinstance(node, (ast.List, ast.Tuple)):
        return [part for element in node.elts for part in parts_of(element)]
    if isinstance(node, ast.JoinedStr):
        return [part for value in node.values for part in parts_of(value)]
    if isinstance(node, ast.FormattedValue):
        return parts_of(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return parts_of(node.left) + parts_of(node.right)
    # "?" * n builds placeholders, and the count is not SQL text.
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult) and getattr(node.left, "value", None) == "?":
        return []
    if isinstance(node, ast.Call):
        function = node.func
        callee = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        if callee == "int":
            return []
        if callee in ALLOWED_SQL_BUILDERS:
            return []
        if callee == "join" and isinstance(function, ast.Attribute) and isinstance(function.value, ast.Constant):
            return [part for argument in node.args for part in parts_of(argument)]
    if isinstance(node, ast.Name):
        if CONSTANT_NAME.fullmatch(node.id):
            return []
        if node.id in seen:
            return []
        values = bindings(functions, node.id, wrappers)
        if not values:
            return [f"{node.id} (not bound in the function)"]
        problems = []
        for value in values:
            if value == "wrapper parameter":
                continue
            if isinstance(value, str):
                if value.startswith("loop over ") and value.removeprefix("loop over ") in ALLOWED_SQL_ITERABLES:
                    continue
                problems.append(f"{node.id} ({value})")
                continue
            problems += parts_of(value, seen | {node.id})
        return problems
    return [ast.unparse(node)]


def check_sql_source(source: str, label: str) -> SqlCheck:
    """Find SQL calls in ``source`` whose SQL text is built from a value rather than constants."""
    result = SqlCheck()
    wrappers = SQL_WRAPPERS.get(label, {})
    tree = ast.parse(source)
    parents = enclosing_functions(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        callee = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        position = 0 if callee in SQL_CALLS else wrappers.get(callee)
        if position is None or len(node.args) <= position:
            continue
        result.calls += 1
        for part in unsafe_parts(node.args[position], parents[node], wrappers):
            result.problems.append(f"{label}:{node.lineno}: {callee}() SQL contains {part}")
    return result


def python_sources(*folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((REPO_ROOT / folder).rglob("*.py"))


def test_sql_parameterised_everywhere() -> None:
    total = SqlCheck()
    for path in python_sources("core", "bot"):
        checked = check_sql_source(path.read_text(encoding="utf-8"), str(path.relative_to(REPO_ROOT)))
        total.calls += checked.calls
        total.problems += checked.problems

    assert total.problems == []
    assert total.calls >= 30, f"only {total.calls} SQL calls found; the scan missed the storage code"


@pytest.mark.parametrize(
    "source",
    [
        "def f(c, name):\n    c.execute(f\"SELECT * FROM people WHERE name = '{name}'\")\n",
        "def f(c, name):\n    c.execute(\"SELECT * FROM people WHERE name = '%s'\" % name)\n",
        "def f(c, name):\n    c.execute(\"SELECT * FROM people WHERE name = '{}'\".format(name))\n",
        'def f(c, name):\n    sql = "SELECT * FROM people WHERE name = " + name\n    c.execute(sql)\n',
        'def f(c, name):\n    parts = ["id = ?"]\n    parts.append(name)\n    c.execute(" AND ".join(parts))\n',
        "def f(c, sql):\n    c.execute(sql)\n",
    ],
)
def test_sql_check_flags_values(source: str) -> None:
    assert check_sql_source(source, "example").problems != []


def test_sql_check_allows_exceptions() -> None:
    source = (
        "_COLUMNS = 'id, name'\n"
        "def f(c, ids, flag):\n"
        "    parts = ['id > ?']\n"
        "    if flag:\n"
        "        parts.append('name = ?')\n"
        "    sql = f\"SELECT {_COLUMNS} FROM people WHERE {' AND '.join(parts)}\"\n"
        "    sql += ' ORDER BY id'\n"
        "    c.execute(sql, ids)\n"
        "    c.execute(f\"SELECT id FROM people WHERE id IN ({', '.join('?' * len(ids))})\", ids)\n"
        "    c.execute(schema.user_version_statement(3))\n"
        "    for statement in migration.statements:\n"
        "        c.execute(statement)\n"
    )

    assert check_sql_source(source, "example").problems == []


# Logs: no bot token, no embedding values.

# Eight or more numbers with decimals in a row, separated by commas or blanks: a printed vector.
FLOAT_RUN = re.compile(r"(?:-?\d+\.\d+(?:e[-+]?\d+)?[,;\s]+){7,}-?\d+\.\d+")


def embedding_fragments(db_path: Path) -> list[str]:
    """Return the ways the first values of stored templates would print: repr, str of float32 and %.6f."""
    fragments = []
    for (blob,) in query_rows(db_path, "SELECT embedding FROM templates ORDER BY id LIMIT 4"):
        vector = np.frombuffer(blob, dtype="<f4")
        for value in vector[:4]:
            if abs(value) < 0.01:
                continue
            fragments += [repr(float(value)), str(value), f"{value:.6f}"]
    assert fragments, "no stored templates to look for"
    return fragments


def bot_log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Return the captured log as formatted at emit time, without the lines of the test's fake Bot API server."""
    lines = caplog.text.splitlines()
    return "\n".join(line for line in lines if " fake_bot_api:" not in line)


def assert_log_is_clean(text: str, db_path: Path) -> None:
    assert TOKEN not in text
    assert TOKEN.split(":")[1] not in text
    for fragment in embedding_fragments(db_path):
        assert fragment not in text, f"embedding value {fragment} is in the log"
    assert FLOAT_RUN.search(text) is None, f"a run of numbers is in the log: {FLOAT_RUN.search(text)}"


async def test_bot_logs_no_token_or_embedding(
    harness: Harness, datasets_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # As run_bot does: httpx and httpcore at WARNING, and redaction on the root logger's
    # handlers, which include caplog's.
    for name in _QUIET_LOGGERS:
        caplog.set_level(logging.WARNING, logger=name)
    # Last, because set_level also sets the level of caplog's handler.
    caplog.set_level(logging.DEBUG)
    remove_redaction = install_token_redaction(TOKEN)
    try:
        await harness.state.consent.grant(ADA["id"])
        photo = harness.api.add_file(lfw_bytes(datasets_dir, "Angela_Merkel"))
        enrolled = await harness.send(private_chat(ADA), ADA, caption="/enroll", photo=photo)
        probe = harness.api.add_file(lfw_bytes(datasets_dir, "Angela_Merkel", 2))
        identified = await harness.send(private_chat(ADA), ADA, photo=probe)
        me = await harness.send(private_chat(ADA), ADA, text="/me")
    finally:
        remove_redaction()

    assert harness.reply(enrolled).text.startswith("Enrolled you as Ada Lovelace.")
    assert "Ada Lovelace" in (harness.reply(identified).text or harness.reply(identified).params.get("caption", ""))
    assert "Ada Lovelace" in harness.reply(me).text
    assert "getFile" in caplog.text or "sendMessage" in caplog.text, "the Bot API requests were not logged"
    assert_log_is_clean(bot_log_text(caplog), harness.db_path)


def test_cli_debug_logs_no_embedding(
    tmp_path: Path,
    model_cache_dir: Path,
    pipeline: FacePipeline,
    datasets_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in list(os.environ):
        if name.startswith("MASKID_"):
            monkeypatch.delenv(name)
    db_path = tmp_path / "gallery.sqlite3"
    monkeypatch.setenv("MASKID_DB", str(db_path))
    monkeypatch.setenv("MASKID_CACHE_DIR", str(model_cache_dir))
    monkeypatch.setenv("MASKID_TORCH_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(FacePipeline, "from_settings", classmethod(lambda cls, settings, **kwargs: pipeline))
    caplog.set_level(logging.DEBUG)
    lfw = datasets_dir / "lfw/Angela_Merkel"

    enroll_status = main(["-vv", "enroll", "Angela Merkel", str(lfw / "Angela_Merkel_0001.jpg")])
    identify_status = main(["-vv", "identify", str(lfw / "Angela_Merkel_0002.jpg")])
    captured = capsys.readouterr()

    assert enroll_status == 0
    assert identify_status == 0
    assert "Angela Merkel" in captured.out
    assert any(record.levelno == logging.DEBUG for record in caplog.records), "-vv logged nothing at debug level"
    assert_log_is_clean(caplog.text + captured.err, db_path)

"""A fake Telegram Bot API server on 127.0.0.1, for the bot tests and ``scripts/bot_load.py``.

It implements the Bot API methods that python-telegram-bot 22 calls for the maskid bot,
hands out updates that a test queues (long polling with ``getUpdates``), serves files
under the file URL, and records every request so that a test can wait for the bot's
replies. It runs ``http.server`` in a background thread, one thread per connection, so
tests may block on :meth:`FakeBotApi.wait_for` without stopping it.

Point the bot at it with ``TELEGRAM_API_BASE_URL=api.base_url`` and
``TELEGRAM_API_FILE_URL=api.file_url``; python-telegram-bot appends the token to both.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

logger = logging.getLogger(__name__)

# Well-formed but made up: a bot id, a colon and 35 characters, as @BotFather issues them.
TOKEN = "123456789:AAEfakeTokenForMaskidTests_abcdefgh"
BOT_ID = 123456789
BOT_USERNAME = "maskid_test_bot"

# Form fields that hold plain text and are never JSON-decoded.
_TEXT_FIELDS = frozenset({"text", "caption", "file_id", "callback_query_id", "secret_token", "url", "action"})

_TRUE_METHODS = frozenset(
    {
        "deleteWebhook",
        "setWebhook",
        "setMyCommands",
        "deleteMyCommands",
        "sendChatAction",
        "answerCallbackQuery",
        "close",
        "logOut",
    }
)


@dataclass(frozen=True)
class ApiCall:
    """One Bot API request the bot made, with the fake server's result.

    Attributes:
        params: form fields, JSON-decoded except the plain-text ones (``text``, ``caption``, ...).
        files: uploaded files of a multipart request, by field name.
        time: ``time.monotonic()`` when the request arrived.
    """

    method: str
    params: dict[str, Any]
    files: dict[str, bytes]
    time: float
    result: Any = None

    @property
    def chat_id(self) -> int | None:
        value = self.params.get("chat_id")
        return None if value is None else int(value)

    @property
    def reply_to(self) -> int | None:
        """Id of the message this call replies to, or None."""
        parameters = self.params.get("reply_parameters")
        if isinstance(parameters, dict):
            return parameters.get("message_id")
        value = self.params.get("reply_to_message_id")
        return None if value is None else int(value)

    @property
    def text(self) -> str:
        """The text or caption the call sends or edits in, or an empty string."""
        return str(self.params.get("text") or self.params.get("caption") or "")

    def button_data(self) -> list[str]:
        """Callback data of every inline button in the call's ``reply_markup``."""
        markup = self.params.get("reply_markup") or {}
        return [
            button["callback_data"]
            for row in markup.get("inline_keyboard", [])
            for button in row
            if "callback_data" in button
        ]


@dataclass(frozen=True)
class FileRef:
    """A file the fake server serves, with the fields a Telegram update carries for a photo or document."""

    file_id: str
    file_unique_id: str
    file_size: int


@dataclass
class _Update:
    update_id: int
    payload: dict[str, Any]
    added_at: float


@dataclass
class _State:
    """Everything the request threads share, guarded by ``condition``."""

    condition: threading.Condition = field(default_factory=threading.Condition)
    updates: list[_Update] = field(default_factory=list)
    calls: list[ApiCall] = field(default_factory=list)
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    messages: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    chats: dict[int, dict[str, Any]] = field(default_factory=dict)
    added_at: dict[int, float] = field(default_factory=dict)
    # Send calls by (chat id, id of the quoted message), so waiting for a reply needs no scan.
    replies: dict[tuple[int, int], list[ApiCall]] = field(default_factory=dict)
    stopping: bool = False


class FakeBotApi:
    """A Bot API server for one bot token, on 127.0.0.1 and a free port.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. Requests with
    another token get 401 Unauthorized, as from the real server.
    """

    def __init__(self, token: str = TOKEN, *, username: str = BOT_USERNAME) -> None:
        self.token = token
        self.username = username
        self._state = _State()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle.

    def start(self) -> FakeBotApi:
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-bot-api", daemon=True)
        self._thread.start()
        logger.info("fake Bot API listening on %s", self.origin)
        return self

    def stop(self) -> None:
        with self._state.condition:
            self._state.stopping = True
            self._state.condition.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeBotApi:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start the server first"
        return self._server.server_address[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """Value for ``TELEGRAM_API_BASE_URL``; the token is appended to it."""
        return f"{self.origin}/bot"

    @property
    def file_url(self) -> str:
        """Value for ``TELEGRAM_API_FILE_URL``; the token is appended to it."""
        return f"{self.origin}/file/bot"

    # What tests put in.

    def add_file(self, data: bytes, *, declared_size: int | None = None, suffix: str = "jpg") -> FileRef:
        """Serve ``data`` as a new file. ``declared_size`` overrides the size that updates and getFile report."""
        number = next(self._ids)
        file_id = f"file-{number}"
        with self._state.condition:
            self._state.files[file_id] = (data, f"documents/{file_id}.{suffix}")
        return FileRef(file_id, f"unique-{number}", len(data) if declared_size is None else declared_size)

    def add_update(self, payload: dict[str, Any], *, queue: bool = True) -> dict[str, Any]:
        """Give ``payload`` (``{"message": ...}`` or ``{"callback_query": ...}``) an update id and return the update.

        With ``queue`` the update waits for the bot's getUpdates; without it the caller
        passes it to the application itself. Either way the chat is remembered, so that
        the bot's messages to it carry the right chat type.
        """
        with self._state.condition:
            update_id = next(self._ids)
            now = time.monotonic()
            for message in (payload.get("message"), (payload.get("callback_query") or {}).get("message")):
                if message:
                    self._state.chats[message["chat"]["id"]] = message["chat"]
                    self._state.added_at[message["message_id"]] = now
            update = {"update_id": update_id, **payload}
            if queue:
                self._state.updates.append(_Update(update_id, update, now))
                self._state.condition.notify_all()
        return update

    def build_message(
        self,
        chat: dict[str, Any],
        user: dict[str, Any],
        *,
        text: str | None = None,
        caption: str | None = None,
        photo: FileRef | None = None,
        document: FileRef | None = None,
        file_name: str = "photo.jpg",
        mime_type: str | None = "image/jpeg",
        reply_to: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Return a message from ``user`` in ``chat`` as the Bot API shows it, with a new message id."""
        message: dict[str, Any] = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "chat": chat,
            "from": user,
        }
        if text is not None:
            message["text"] = text
            message["entities"] = _command_entities(text)
        if caption is not None:
            message["caption"] = caption
            message["caption_entities"] = _command_entities(caption)
        if photo is not None:
            message["photo"] = [
                {"file_id": photo.file_id, "file_unique_id": photo.file_unique_id, "width": 250, "height": 250,
                 "file_size": photo.file_size}
            ]  # fmt: skip
        if document is not None:
            message["document"] = {
                "file_id": document.file_id,
                "file_unique_id": document.file_unique_id,
                "file_name": file_name,
                "file_size": document.file_size,
            }
            if mime_type is not None:
                message["document"]["mime_type"] = mime_type
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        return message

    def send_message(self, chat: dict[str, Any], user: dict[str, Any], **content: Any) -> dict[str, Any]:
        """Queue a message from ``user`` in ``chat`` and return it; ``content`` is as for :meth:`build_message`."""
        message = self.build_message(chat, user, **content)
        self.add_update({"message": message})
        return message

    def build_button_press(self, user: dict[str, Any], bot_message: dict[str, Any], data: str) -> dict[str, Any]:
        """Return a callback query: ``user`` presses the button with ``data`` under ``bot_message``."""
        return {
            "callback_query": {
                "id": f"query-{next(self._ids)}",
                "from": user,
                "chat_instance": "fake-chat-instance",
                "message": bot_message,
                "data": data,
            }
        }

    def press_button(self, user: dict[str, Any], bot_message: dict[str, Any], data: str) -> dict[str, Any]:
        """Queue a button press (see :meth:`build_button_press`) and return the update."""
        return self.add_update(self.build_button_press(user, bot_message, data))

    # What tests read.

    def calls(self, method: str | None = None) -> list[ApiCall]:
        with self._state.condition:
            return [call for call in self._state.calls if method is None or call.method == method]

    def added_at(self, message_id: int) -> float:
        """``time.monotonic()`` when the message with ``message_id`` was queued."""
        with self._state.condition:
            return self._state.added_at[message_id]

    def pending_updates(self) -> int:
        """Updates queued but not yet confirmed by the bot through a later getUpdates offset."""
        with self._state.condition:
            return len(self._state.updates)

    def wait_for(self, predicate: Callable[[ApiCall], bool], *, timeout: float = 30.0, after: int = 0) -> ApiCall:
        """Return the first recorded call from index ``after`` on that matches ``predicate``.

        Raises:
            TimeoutError: none arrived within ``timeout`` seconds; the message lists the calls seen.
        """
        deadline = time.monotonic() + timeout
        with self._state.condition:
            while True:
                for call in self._state.calls[after:]:
                    if predicate(call):
                        return call
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [f"{call.method} {call.params}" for call in self._state.calls[after:]][-15:]
                    raise TimeoutError(f"no matching Bot API call within {timeout} s; calls seen: {seen}")
                self._state.condition.wait(remaining)

    def wait_for_reply(
        self,
        message: dict[str, Any],
        *,
        methods: Iterable[str] = ("sendMessage", "sendPhoto"),
        timeout: float = 30.0,
    ) -> ApiCall:
        """Wait for the bot's first reply to ``message``: a send call in its chat that quotes it.

        Raises:
            TimeoutError: no reply arrived within ``timeout`` seconds.
        """
        wanted = set(methods)
        key = (message["chat"]["id"], message["message_id"])
        deadline = time.monotonic() + timeout
        with self._state.condition:
            while True:
                for call in self._state.replies.get(key, []):
                    if call.method in wanted:
                        return call
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no reply to message {key[1]} in chat {key[0]} within {timeout} s")
                self._state.condition.wait(remaining)

    def file_bytes(self, file_id: str) -> bytes:
        """Bytes of a served file, including photos the bot uploaded with sendPhoto."""
        with self._state.condition:
            return self._state.files[file_id][0]

    # Request handling, called on the server's threads.

    def _handle(self, method: str, params: dict[str, Any], files: dict[str, bytes]) -> tuple[int, dict[str, Any]]:
        with self._state.condition:
            # Recorded on arrival, so a test can detect the bot polling while the request still waits.
            call = ApiCall(method, params, files, time.monotonic())
            self._state.calls.append(call)
            self._state.condition.notify_all()
            if method == "getUpdates":
                status, body = 200, {"ok": True, "result": self._get_updates(params)}
            else:
                status, body = self._answer(method, params, files)
            # The result is filled in before waiters can see the call again, under the same lock.
            object.__setattr__(call, "result", body.get("result"))
            if call.chat_id is not None and call.reply_to is not None:
                self._state.replies.setdefault((call.chat_id, call.reply_to), []).append(call)
            self._state.condition.notify_all()
        return status, body

    def _answer(self, method: str, params: dict[str, Any], files: dict[str, bytes]) -> tuple[int, dict[str, Any]]:
        """Build the response for ``method``. The caller must have acquired the condition."""
        if method == "getMe":
            return 200, {"ok": True, "result": self._bot_user()}
        if method in _TRUE_METHODS:
            return 200, {"ok": True, "result": True}
        if method == "getWebhookInfo":
            return 200, {"ok": True, "result": {"url": "", "has_custom_certificate": False, "pending_update_count": 0}}
        if method == "getFile":
            return self._get_file(str(params.get("file_id")))
        if method == "sendMessage":
            return 200, {"ok": True, "result": self._new_message(params, {"text": params.get("text", "")})}
        if method == "sendPhoto":
            return 200, {"ok": True, "result": self._new_message(params, self._photo_fields(params, files))}
        if method in ("editMessageText", "editMessageReplyMarkup"):
            return self._edit_message(params)
        return 404, {"ok": False, "error_code": 404, "description": "Not Found: method not found"}

    def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Return queued updates, waiting up to ``timeout`` seconds for one.

        The caller must have acquired the condition.
        """
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        deadline = time.monotonic() + float(params.get("timeout") or 0)
        # An offset confirms every update before it, as in the real Bot API.
        self._state.updates = [update for update in self._state.updates if update.update_id >= offset]
        while not self._state.updates and not self._state.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._state.condition.wait(remaining)
        return [update.payload for update in self._state.updates[:limit]]

    def _get_file(self, file_id: str) -> tuple[int, dict[str, Any]]:
        if file_id not in self._state.files:
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: invalid file_id"}
        data, path = self._state.files[file_id]
        result = {"file_id": file_id, "file_unique_id": f"unique-{file_id}", "file_size": len(data), "file_path": path}
        return 200, {"ok": True, "result": result}

    def _photo_fields(self, params: dict[str, Any], files: dict[str, bytes]) -> dict[str, Any]:
        data = files.get("photo", b"")
        file_id = f"sent-{next(self._ids)}"
        self._state.files[file_id] = (data, f"photos/{file_id}.jpg")
        fields: dict[str, Any] = {
            "photo": [{"file_id": file_id, "file_unique_id": f"unique-{file_id}", "width": 1, "height": 1}]
        }
        if params.get("caption"):
            fields["caption"] = params["caption"]
        return fields

    def _new_message(self, params: dict[str, Any], content: dict[str, Any]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        message = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "chat": self._state.chats.get(chat_id, _chat_for(chat_id)),
            "from": self._bot_user(),
            **content,
        }
        # Sent messages carry only inline keyboards, as in the real Bot API, not ForceReply.
        if isinstance(params.get("reply_markup"), dict) and "inline_keyboard" in params["reply_markup"]:
            message["reply_markup"] = params["reply_markup"]
        self._state.messages[(chat_id, message["message_id"])] = message
        return message

    def _edit_message(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        key = (int(params.get("chat_id", 0)), int(params.get("message_id", 0)))
        message = self._state.messages.get(key)
        if message is None:
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message to edit not found"}
        if "text" in params:
            message["text"] = params["text"]
        if isinstance(params.get("reply_markup"), dict):
            message["reply_markup"] = params["reply_markup"]
        else:
            message.pop("reply_markup", None)
        return 200, {"ok": True, "result": message}

    def _bot_user(self) -> dict[str, Any]:
        return {
            "id": int(self.token.split(":", 1)[0]),
            "is_bot": True,
            "first_name": "maskid test",
            "username": self.username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }


class _Handler(BaseHTTPRequestHandler):
    """Route ``/bot<token>/<method>`` to the API and ``/file/bot<token>/<path>`` to the files."""

    api: FakeBotApi
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects from the real server

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake Bot API: " + format, *args)

    def _dispatch(self) -> None:
        # python-telegram-bot percent-encodes file URLs, which turns the token's colon into %3A.
        path = unquote(urlsplit(self.path).path)
        body = self._read_body()
        file_prefix = f"/file/bot{self.api.token}/"
        api_prefix = f"/bot{self.api.token}/"
        if path.startswith(file_prefix):
            self._serve_file(path[len(file_prefix) :])
        elif path.startswith(api_prefix):
            params, files = _parse_body(self.headers.get("Content-Type", ""), body, urlsplit(self.path).query)
            status, response = self.api._handle(path[len(api_prefix) :], params, files)
            self._send(status, json.dumps(response).encode(), "application/json")
        else:
            logger.info("fake Bot API: unauthorized request %s %s", self.command, self.path)
            response = {"ok": False, "error_code": 401, "description": "Unauthorized"}
            self._send(401, json.dumps(response).encode(), "application/json")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve_file(self, file_path: str) -> None:
        with self.api._state.condition:
            match = [data for data, path in self.api._state.files.values() if path == file_path]
        if not match:
            self._send(404, b"file not found", "text/plain")
        else:
            self._send(200, match[0], "application/octet-stream")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The bot closed a long-polling connection while it stopped.
            logger.debug("fake Bot API: client closed the connection before the response")


def _parse_body(content_type: str, body: bytes, query: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Decode the form, multipart or JSON body of a Bot API request into fields and uploaded files."""
    fields: dict[str, str] = dict(parse_qsl(query))
    files: dict[str, bytes] = {}
    if content_type.startswith("application/json") and body:
        return json.loads(body), files
    if content_type.startswith("multipart/form-data"):
        header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if part.get_filename() is not None:
                files[name] = payload
            else:
                fields[name] = payload.decode()
    elif body:
        fields.update(parse_qsl(body.decode(), keep_blank_values=True))
    return {name: _decode_field(name, value) for name, value in fields.items()}, files


def _decode_field(name: str, value: str) -> Any:
    if name in _TEXT_FIELDS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _command_entities(text: str) -> list[dict[str, Any]]:
    """Mark a leading ``/command`` the way Telegram does, which CommandHandler relies on."""
    if not text.startswith("/"):
        return []
    return [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]


def _chat_for(chat_id: int) -> dict[str, Any]:
    return {"id": chat_id, "type": "private"} if chat_id > 0 else {"id": chat_id, "type": "supergroup", "title": "g"}


def private_chat(user: dict[str, Any]) -> dict[str, Any]:
    """The private chat of ``user``, whose id is the user's id, as in Telegram."""
    return {"id": user["id"], "type": "private", "first_name": user["first_name"]}


def group_chat(chat_id: int, title: str = "group") -> dict[str, Any]:
    """A supergroup; Telegram gives supergroups negative ids."""
    return {"id": chat_id, "type": "supergroup", "title": title}


def make_user(user_id: int, first_name: str, last_name: str | None = None) -> dict[str, Any]:
    user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": "en"}
    if last_name:
        user["last_name"] = last_name
    return user

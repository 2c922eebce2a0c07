"""Enrollment: /enroll and /celebrity with a photo, as a reply to a photo, or followed by one; consent first.

A user's first enrollment stores nothing until they press the consent button; the photo
waits in memory until then, for at most ``telegram_conversation_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging

from telegram import ForceReply, InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.constants import ChatAction
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot.access import NotAllowedError, enroll_target
from bot.admission import admit_photo_request
from bot.commands import ParsedCommand, parse_command
from bot.conversations import AwaitedPhoto, ConsentRequest, EnrollTarget, claim_answer, new_token
from bot.messaging import chat_action, reply
from bot.photos import PhotoRef, PhotoRejectedError, check_photo, download_photo, photo_of
from bot.replies import BUSY, NO_FACE, consent_request_text, enrolled_text
from bot.request_log import RequestRecord, logged_request
from bot.state import BotState, bot_state
from bot.workload import BusyError
from core.errors import NoFaceError

logger = logging.getLogger(__name__)

CONSENT_YES = "consent:yes:"
CONSENT_NO = "consent:no:"


async def enroll_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Handle ``/enroll [NAME]`` and ``/celebrity NAME`` sent as text.

    As a reply to a photo, the photo is enrolled. Otherwise the bot waits for the user's
    next photo in this chat.
    """
    message = update.effective_message
    command = parse_command(message.text, context.bot.username) or ParsedCommand("enroll", "")
    async with logged_request(update, command.name) as record:
        state = bot_state(context)
        target = await _target_or_reply(update, context, command, record)
        if target is None:
            return

        replied = message.reply_to_message
        photo = photo_of(replied, max_bytes=state.settings.telegram_max_download_bytes)
        if photo is None:
            await _await_photo(update, context, target, record)
            return
        if not _may_enroll_photo_of(state, update, replied):
            record.outcome = "denied"
            await reply(
                context.bot,
                message.chat_id,
                message.message_id,
                "You can enroll only photos that you sent yourself. Reply with /enroll to your own photo.",
            )
            return
        await enroll_photo(update, context, photo, target, record, reply_to_id=message.message_id)


async def enroll_from_caption(
    update: Update, context: ContextTypes.DEFAULT_TYPE, photo: PhotoRef, command: ParsedCommand
) -> None:
    """Handle a photo whose caption is ``/enroll [NAME]`` or ``/celebrity NAME``."""
    async with logged_request(update, command.name) as record:
        target = await _target_or_reply(update, context, command, record)
        if target is not None:
            message_id = update.effective_message.message_id
            await enroll_photo(update, context, photo, target, record, reply_to_id=message_id)


async def enroll_awaited_photo(
    update: Update, context: ContextTypes.DEFAULT_TYPE, photo: PhotoRef, awaited: AwaitedPhoto
) -> None:
    """Handle the photo that a user sent after ``/enroll`` without one."""
    async with logged_request(update, "enroll") as record:
        message_id = update.effective_message.message_id
        await enroll_photo(update, context, photo, awaited.target, record, reply_to_id=message_id)


async def enroll_photo(
    update: Update,
    context: ContextTypes.DEFAULT_TYPE,
    photo: PhotoRef,
    target: EnrollTarget,
    record: RequestRecord,
    *,
    reply_to_id: int,
) -> None:
    """Enroll ``photo`` as ``target``, after asking for consent if the user has not given it yet.

    Every reply quotes the message ``reply_to_id``: the photo with the command, or the command itself.
    """
    state = bot_state(context)
    user = update.effective_user
    chat_id = update.effective_chat.id
    try:
        # Reject an oversized or non-image file now, rather than after the consent question.
        check_photo(photo, max_bytes=state.settings.telegram_max_download_bytes)
    except PhotoRejectedError as exc:
        record.outcome = "rejected"
        await reply(context.bot, chat_id, reply_to_id, str(exc))
        return

    if not target.public and await state.consent.given_at(user.id) is None:
        token = new_token()
        state.consent_requests.put(token, ConsentRequest(target, photo, user.id, chat_id, reply_to_id))
        buttons = InlineKeyboardMarkup(
            [
                [
                    InlineKeyboardButton("Yes, store it", callback_data=CONSENT_YES + token),
                    InlineKeyboardButton("No", callback_data=CONSENT_NO + token),
                ]
            ]
        )
        record.outcome = "consent_requested"
        await reply(context.bot, chat_id, reply_to_id, consent_request_text(), reply_markup=buttons)
        return

    await store_enrollment(
        context, state, photo, target, record, chat_id=chat_id, user_id=user.id, message_id=reply_to_id
    )


async def store_enrollment(
    context: ContextTypes.DEFAULT_TYPE,
    state: BotState,
    photo: PhotoRef,
    target: EnrollTarget,
    record: RequestRecord,
    *,
    chat_id: int,
    user_id: int,
    message_id: int,
) -> None:
    """Download ``photo``, enroll its main face as ``target`` and reply with the result."""
    if not await admit_photo_request(
        state, context.bot, user_id=user_id, chat_id=chat_id, message_id=message_id, record=record
    ):
        return
    try:
        with state.workload.slot():
            async with chat_action(context.bot, chat_id, ChatAction.TYPING):
                image = await download_photo(context.bot, photo, state.settings)
                result = await state.service.enroll(
                    target.name, image, source=target.source, owner_id=target.owner_id, chat_id=target.chat_id
                )
    except BusyError:
        record.outcome = "busy"
        await reply(context.bot, chat_id, message_id, BUSY)
        return
    except PhotoRejectedError as exc:
        record.outcome = "rejected"
        await reply(context.bot, chat_id, message_id, str(exc))
        return
    except NoFaceError:
        record.outcome = "no_face"
        record.faces = 0
        await reply(context.bot, chat_id, message_id, NO_FACE + " Nothing was stored.")
        return

    record.faces = result.faces_in_image
    record.outcome = "already_enrolled" if result.already_enrolled else "enrolled"
    text = enrolled_text(result, self_enrolled=target.self_enrolled, public=target.public)
    await reply(context.bot, chat_id, message_id, text)


async def consent_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Handle the consent buttons: on "yes" record consent and enroll the held photo, on "no" drop it."""
    query = update.callback_query
    async with logged_request(update, "consent") as record:
        state = bot_state(context)
        answer = await claim_answer(
            query,
            state.consent_requests,
            record,
            yes_prefix=CONSENT_YES,
            no_prefix=CONSENT_NO,
            expired_text="This question has expired. Send /enroll with your photo again.",
            command="/enroll",
        )
        if answer is None:
            return
        request, agreed = answer

        if not agreed:
            record.outcome = "consent_refused"
            await query.edit_message_text("Understood: nothing was stored.")
            return
        await state.consent.grant(request.user_id)
        await query.edit_message_text("Thank you. Enrolling now…")
        await store_enrollment(
            context,
            state,
            request.photo,
            request.target,
            record,
            chat_id=request.chat_id,
            user_id=request.user_id,
            message_id=request.reply_to_id,
        )


async def cancel_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Handle ``/cancel``: stop waiting for the user's /enroll photo in this chat."""
    message = update.effective_message
    async with logged_request(update, "cancel") as record:
        awaited = bot_state(context).awaited_photos.pop((message.chat_id, update.effective_user.id))
        record.outcome = "cancelled" if awaited else "nothing_pending"
        text = "Cancelled: I am no longer waiting for a photo." if awaited else "There was nothing to cancel."
        await reply(context.bot, message.chat_id, message.message_id, text)


async def _target_or_reply(
    update: Update, context: ContextTypes.DEFAULT_TYPE, command: ParsedCommand, record: RequestRecord
) -> EnrollTarget | None:
    """Return whom the command enrolls, or reply why it is not allowed and return None."""
    message = update.effective_message
    try:
        return enroll_target(
            bot_state(context).settings,
            update.effective_user,
            update.effective_chat,
            command.args,
            public=command.name == "celebrity",
        )
    except NotAllowedError as exc:
        record.outcome = "denied"
        await reply(context.bot, message.chat_id, message.message_id, str(exc))
        return None


async def _await_photo(
    update: Update, context: ContextTypes.DEFAULT_TYPE, target: EnrollTarget, record: RequestRecord
) -> None:
    """Remember that the user's next photo in this chat is for ``target``, and ask for it."""
    state = bot_state(context)
    message = update.effective_message
    user_id = update.effective_user.id
    key = (message.chat_id, user_id)
    awaited = AwaitedPhoto(target, user_id, message.chat_id, message.message_id)
    # Stored before the first await, so a photo sent right after the command finds it.
    state.awaited_photos.put(key, awaited)
    record.outcome = "awaiting_photo"

    timeout = state.settings.telegram_conversation_timeout_s
    who = "yourself" if target.self_enrolled else target.name
    text = f"Send the photo of {who} within {timeout:g} seconds, as a reply to this message. /cancel stops."
    # In groups, ForceReply opens a reply to this message, which a bot in privacy mode receives.
    markup = ForceReply(selective=True) if message.chat.type != "private" else None
    await reply(context.bot, message.chat_id, message.message_id, text, reply_markup=markup)
    state.start_timer(_expire_awaited_photo(context, key, awaited, timeout))


async def _expire_awaited_photo(
    context: ContextTypes.DEFAULT_TYPE, key: tuple[int, int], awaited: AwaitedPhoto, timeout: float
) -> None:
    """After ``timeout`` seconds, drop ``awaited`` if no photo has used it, and tell the user."""
    await asyncio.sleep(timeout)
    if not bot_state(context).awaited_photos.pop_if(key, awaited):
        return
    logger.info("chat %d: /enroll of user %d timed out after %g s", awaited.chat_id, awaited.user_id, timeout)
    try:
        await reply(
            context.bot,
            awaited.chat_id,
            awaited.command_message_id,
            "No photo arrived in time, so nothing was enrolled. Send /enroll again when you are ready.",
        )
    except TelegramError as exc:
        logger.warning("chat %d: timeout notice for user %d failed: %s", awaited.chat_id, awaited.user_id, exc)


def _may_enroll_photo_of(state: BotState, update: Update, photo_message: Message) -> bool:
    """Return whether the user may enroll the photo they replied to: their own photo, or any if they are admin."""
    user_id = update.effective_user.id
    if user_id in state.settings.telegram_admin_ids:
        return True
    return photo_message.from_user is not None and photo_message.from_user.id == user_id

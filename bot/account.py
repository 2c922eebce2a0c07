"""A user's own data: /me lists it, /forget deletes it after a confirm button."""

from __future__ import annotations

import logging

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.ext import ContextTypes

from bot.conversations import ForgetRequest, claim_answer, new_token
from bot.messaging import reply
from bot.replies import forget_question_text, forgotten_text, me_text
from bot.request_log import logged_request
from bot.state import bot_state

logger = logging.getLogger(__name__)

FORGET_YES = "forget:yes:"
FORGET_NO = "forget:no:"


async def me_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Handle ``/me``: list the people the user enrolled, with counts and dates, and their consent."""
    message = update.effective_message
    user_id = update.effective_user.id
    async with logged_request(update, "me") as record:
        state = bot_state(context)
        summaries = await state.service.user_summary(user_id)
        consent_at = await state.consent.given_at(user_id)
        record.outcome = f"{len(summaries)}_people"
        await reply(context.bot, message.chat_id, message.message_id, me_text(summaries, consent_at))


async def forget_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Handle ``/forget``: list what would be deleted and request confirmation with a button."""
    message = update.effective_message
    user_id = update.effective_user.id
    async with logged_request(update, "forget") as record:
        state = bot_state(context)
        summaries = await state.service.user_summary(user_id)
        if not summaries and await state.consent.given_at(user_id) is None:
            record.outcome = "nothing_stored"
            await reply(context.bot, message.chat_id, message.message_id, "I store nothing about you.")
            return

        token = new_token()
        state.forget_requests.put(token, ForgetRequest(user_id))
        buttons = InlineKeyboardMarkup(
            [
                [
                    InlineKeyboardButton("Delete everything", callback_data=FORGET_YES + token),
                    InlineKeyboardButton("Cancel", callback_data=FORGET_NO + token),
                ]
            ]
        )
        record.outcome = "confirm_requested"
        text = forget_question_text(summaries)
        await reply(context.bot, message.chat_id, message.message_id, text, reply_markup=buttons)


async def forget_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Handle the /forget buttons: delete the user's people, templates and consent, or cancel."""
    query = update.callback_query
    async with logged_request(update, "forget_confirm") as record:
        state = bot_state(context)
        answer = await claim_answer(
            query,
            state.forget_requests,
            record,
            yes_prefix=FORGET_YES,
            no_prefix=FORGET_NO,
            expired_text="This question has expired. Send /forget again.",
            command="/forget",
        )
        if answer is None:
            return
        request, confirmed = answer

        if not confirmed:
            record.outcome = "cancelled"
            await query.edit_message_text("Cancelled: nothing was deleted.")
            return
        removed = await state.service.forget_user(request.user_id)
        consent_deleted = await state.consent.revoke(request.user_id)
        # Photos held for consent or awaited after /enroll would re-enroll the user.
        state.consent_requests.remove_where(lambda pending: pending.user_id == request.user_id)
        state.awaited_photos.remove_where(lambda pending: pending.user_id == request.user_id)
        record.outcome = f"deleted_{len(removed)}_people"
        await query.edit_message_text(forgotten_text(removed, consent_deleted))

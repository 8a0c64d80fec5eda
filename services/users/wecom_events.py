"""What a decrypted WeCom callback is, and the key that recognises its retries.

WeCom retries a callback it did not see acknowledged, with the same content.
The dedupe key therefore names the event by what identifies it: the change
type, the people or objects it concerns and its CreateTime (so a real second
add of the same contact, later, is a new event, but a retry is not). Tag
callbacks carry no MsgId; contact adds must include both the ExternalUserID
and the staff UserID.
"""

from __future__ import annotations

import hashlib

CONTACT_CHANGES = frozenset(
    {
        "add_external_contact",
        "edit_external_contact",
        "add_half_external_contact",
        "del_external_contact",
        "del_follow_user",
        "transfer_fail",
    }
)
CHAT_CHANGES = frozenset({"create", "update", "dismiss"})
TAG_CHANGES = frozenset({"create", "update", "delete", "shuffle"})


def event_type(msg: dict[str, str]) -> str:
    """e.g. 'change_external_contact.add_external_contact'; 'unknown.<MsgType>' otherwise."""
    if msg.get("MsgType") != "event":
        return f"message.{msg.get('MsgType', 'unknown')}"
    event = msg.get("Event", "unknown")
    change = msg.get("ChangeType")
    return f"{event}.{change}" if change else event


def dedupe_key(msg: dict[str, str], plaintext: str) -> str:
    event = msg.get("Event", "")
    change = msg.get("ChangeType", "")
    created = msg.get("CreateTime", "")
    if event == "change_external_contact":
        # The external id is hashed: keys are stored in clear and must name no one.
        external = hashlib.sha256(msg.get("ExternalUserID", "").encode()).hexdigest()[:24]
        parts = [msg.get("UserID", ""), external, msg.get("FailReason", "")]
    elif event == "change_external_chat":
        parts = [
            msg.get("ChatId", ""),
            msg.get("UpdateDetail", ""),
            msg.get("JoinScene", ""),
            msg.get("QuitScene", ""),
            msg.get("MemChangeCnt", ""),
        ]
    elif event == "change_external_tag":
        parts = [msg.get("TagType", ""), msg.get("Id", ""), msg.get("StrategyId", "")]
    elif msg.get("MsgId"):
        return f"msg:{msg['MsgId']}"
    else:
        # Unknown kinds: the content itself (a retry is byte-identical once decrypted).
        return "sha256:" + hashlib.sha256(plaintext.encode()).hexdigest()
    return ":".join([event, change, *parts, created])

"""WeCom callback message encryption ("企业微信回调消息加解密"), byte for byte.

WeCom signs and encrypts every callback it sends to us:

* ``msg_signature`` = SHA1 hex of the sorted concatenation of
  ``[token, timestamp, nonce, encrypt]``;
* ``encrypt`` = base64 of AES-256-CBC over
  ``random(16) + len(msg) as 4 bytes big-endian + msg + receive_id``, padded
  PKCS#7-style to a multiple of **32** bytes (not the AES block size: that is
  how WeCom's reference code does it), with key = base64(EncodingAESKey + "=")
  and IV = the first 16 bytes of the key.

The signature is checked before anything is decrypted, in constant time, and
every malformed input ends in one `WeComCryptoError` with a stable ``reason``
so the callback endpoint can answer and log without a stack trace. This runs
once per callback (thousands per second at peak), hence the cached key and the
slicing on a memoryview rather than on copies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from typing import Final, NoReturn
from xml.parsers import expat

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "WeComCrypto",
    "WeComCryptoError",
    "check_encoding_aes_key",
    "parse_xml",
]

_ENCODING_AES_KEY_LENGTH: Final = 43
_AES_KEY_BYTES: Final = 32
_RANDOM_BYTES: Final = 16
_LENGTH_BYTES: Final = 4
# WeCom pads to 32 bytes, a multiple of the AES block, so pad values are 1..32.
_PAD_BLOCK: Final = 32
_AES_BLOCK: Final = 16

_REASONS: Final = frozenset(
    {"invalid_signature", "decrypt_failed", "invalid_receive_id", "invalid_aes_key", "bad_xml"}
)


class WeComCryptoError(Exception):
    """A callback that must be refused; ``reason`` says why, in a stable code.

    reason is one of ``invalid_signature``, ``decrypt_failed``,
    ``invalid_receive_id``, ``invalid_aes_key``, ``bad_xml``.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        if reason not in _REASONS:
            raise ValueError(f"unknown WeComCryptoError reason {reason!r}")
        super().__init__(message or reason)
        self.reason = reason


def _decode_aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte AES key, or ValueError saying what is wrong with the setting."""
    if len(encoding_aes_key) != _ENCODING_AES_KEY_LENGTH:
        raise ValueError(
            f"EncodingAESKey must be exactly {_ENCODING_AES_KEY_LENGTH} characters "
            f"(got {len(encoding_aes_key)}); copy it again from the WeCom admin console"
        )
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(
            "EncodingAESKey must contain only the characters A-Z, a-z, 0-9, '+' and '/'"
        ) from exc
    if len(key) != _AES_KEY_BYTES:  # unreachable for 43 valid chars, kept as a guard
        raise ValueError(f"EncodingAESKey must decode to {_AES_KEY_BYTES} bytes")
    return key


def check_encoding_aes_key(value: str) -> str:
    """Validate an EncodingAESKey typed into settings; returns it without surrounding spaces.

    Raises ValueError with a message fit to show the admin, so a pasted key
    that is one character short fails when saved, not on the first callback.
    """
    value = value.strip()
    _decode_aes_key(value)
    return value


def _refuse_declaration(*_args: object) -> NoReturn:
    # A DOCTYPE is never legitimate in a WeCom callback and is the door to
    # XXE and entity-expansion ("billion laughs") attacks: refuse outright.
    raise WeComCryptoError("bad_xml", "XML with a DOCTYPE or ENTITY declaration is refused")


# What WeCom sends: <xml> around flat children, each one CDATA section or plain text
# without markup or references. Such a document is read with two regular
# expressions; anything else (and any character XML refuses or normalises) goes
# to the XML parser, so both ways give the same answer.
_FLAT_CHILD = (
    r"<(?P<tag>[A-Za-z_][A-Za-z0-9_.-]*)>"
    r"(?:<!\[CDATA\[([^\]]*(?:\](?!\]>)[^\]]*)*)\]\]>|([^<&]*))"  # CDATA holds no "]]>"
    r"</(?P=tag)>"
)
_FLAT_DOCUMENT = re.compile(
    rf"[ \t\n]*<xml>((?:[ \t\n]*{_FLAT_CHILD})*)[ \t\n]*</xml>[ \t\n]*", re.S
)
_FLAT_CHILDREN = re.compile(_FLAT_CHILD, re.S)
_NOT_PLAIN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\r\ud800-\udfff\ufffe\uffff]")


def parse_xml(text: str) -> dict[str, str]:
    """The root's child elements as ``{tag: text}`` (CDATA unwrapped, nothing stripped).

    The root must be ``<xml>``. Text nested deeper than the root's children is
    ignored, and a repeated tag keeps its last value. Any DOCTYPE or ENTITY
    declaration, and any malformed document, raises ``WeComCryptoError("bad_xml")``.
    """
    document = _FLAT_DOCUMENT.fullmatch(text)
    if document is not None and not _NOT_PLAIN.search(text):
        flat: dict[str, str] = {}
        for tag, cdata, plain in _FLAT_CHILDREN.findall(document.group(1)):
            value = cdata or plain  # (an empty CDATA section leaves both empty)
            if "]]>" in value:
                break  # not well-formed: the parser below says why
            flat[tag] = value
        else:
            return flat
    return _parse_xml_document(text)


def _parse_xml_document(text: str) -> dict[str, str]:
    parser = expat.ParserCreate("UTF-8")
    parser.StartDoctypeDeclHandler = _refuse_declaration
    parser.EntityDeclHandler = _refuse_declaration
    parser.ExternalEntityRefHandler = _refuse_declaration
    result: dict[str, str] = {}
    depth = 0
    current: list[str] = []
    tag = ""

    def start(name: str, _attrs: dict[str, str]) -> None:
        nonlocal depth, tag
        depth += 1
        if depth == 1 and name != "xml":
            raise WeComCryptoError("bad_xml", f"root element is <{name}>, expected <xml>")
        if depth == 2:
            tag = name
            current.clear()

    def end(_name: str) -> None:
        nonlocal depth
        if depth == 2:
            result[tag] = "".join(current)
        depth -= 1

    def data(chunk: str) -> None:
        if depth == 2:
            current.append(chunk)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = data
    try:
        parser.Parse(text.encode("utf-8"), True)
    except expat.ExpatError as exc:
        raise WeComCryptoError("bad_xml", f"malformed XML: {exc}") from exc
    except UnicodeEncodeError as exc:  # lone surrogates in the str
        raise WeComCryptoError("bad_xml", "XML is not valid UTF-8") from exc
    return result


_ENVELOPE = re.compile(
    r"\A<xml>(?:<ToUserName><!\[CDATA\[[^<\]]*\]\]></ToUserName>)?"
    r"<Encrypt><!\[CDATA\[([A-Za-z0-9+/=]+)\]\]></Encrypt>"
    r"(?:<AgentID><!\[CDATA\[[0-9]*\]\]></AgentID>|<AgentID>[0-9]*</AgentID>)?</xml>\Z"
)


def _decrypt_failed(detail: str) -> WeComCryptoError:
    return WeComCryptoError("decrypt_failed", f"cannot decrypt message: {detail}")


class WeComCrypto:
    """Sign, verify, encrypt and decrypt WeCom callbacks for one (token, key, corp id)."""

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str) -> None:
        try:
            key = _decode_aes_key(encoding_aes_key)
        except ValueError as exc:
            raise WeComCryptoError("invalid_aes_key", str(exc)) from exc
        self._token = token
        self._key = key
        self._iv = key[:_AES_BLOCK]
        # One cipher per key; each message gets its own encryptor or decryptor context.
        self._cipher = Cipher(algorithms.AES(key), modes.CBC(self._iv))
        self._receive_id = receive_id
        self._receive_id_bytes = receive_id.encode("utf-8")

    def signature(self, timestamp: str, nonce: str, encrypt: str) -> str:
        """msg_signature of a message: SHA1 hex of the sorted, concatenated parts."""
        parts = sorted((self._token, timestamp, nonce, encrypt))
        return hashlib.sha1("".join(parts).encode("utf-8"), usedforsecurity=False).hexdigest()

    def _check_signature(self, msg_signature: str, timestamp: str, nonce: str, enc: str) -> None:
        expected = self.signature(timestamp, nonce, enc)
        # compare_digest wants ASCII str or bytes; an attacker-chosen non-ASCII
        # signature must be a refusal, not a TypeError.
        if not hmac.compare_digest(expected.encode(), msg_signature.encode("utf-8", "replace")):
            raise WeComCryptoError("invalid_signature", "msg_signature does not match")

    def verify_url(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """Answer WeCom's URL verification GET: the decrypted echostr, to send back as text."""
        self._check_signature(msg_signature, timestamp, nonce, echostr)
        return self._decrypt(echostr)

    def decrypt_callback(self, msg_signature: str, timestamp: str, nonce: str, body: bytes) -> str:
        """The inner XML of a callback POST, after checking its signature and receive id."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WeComCryptoError("bad_xml", "callback body is not UTF-8") from exc
        # WeCom's envelope as it always sends it, found without building a parser;
        # anything else goes through the full parser and its refusals.
        plain = _ENVELOPE.search(text)
        encrypt = plain.group(1) if plain else parse_xml(text).get("Encrypt")
        if not encrypt:
            raise WeComCryptoError("bad_xml", "callback body has no <Encrypt> element")
        self._check_signature(msg_signature, timestamp, nonce, encrypt)
        return self._decrypt(encrypt)

    def _decrypt(self, encrypt: str) -> str:
        try:
            ciphertext = base64.b64decode(encrypt, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _decrypt_failed("invalid base64") from exc
        if not ciphertext or len(ciphertext) % _AES_BLOCK:
            raise _decrypt_failed("ciphertext is not a whole number of AES blocks")
        decryptor = self._cipher.decryptor()
        plain = memoryview(decryptor.update(ciphertext) + decryptor.finalize())

        pad = plain[-1]
        if not 1 <= pad <= _PAD_BLOCK or pad > len(plain) or plain[-pad:] != bytes((pad,)) * pad:
            raise _decrypt_failed("bad padding")
        end = len(plain) - pad
        body_start = _RANDOM_BYTES + _LENGTH_BYTES
        if end < body_start:
            raise _decrypt_failed("plaintext too short")
        msg_len = int.from_bytes(plain[_RANDOM_BYTES:body_start], "big")
        msg_end = body_start + msg_len
        if msg_end > end:
            raise _decrypt_failed("message length points past the end")
        if plain[msg_end:end] != self._receive_id_bytes:
            raise WeComCryptoError("invalid_receive_id", "message is addressed to another corp")
        try:
            return str(plain[body_start:msg_end], "utf-8")
        except UnicodeDecodeError as exc:
            raise _decrypt_failed("message is not UTF-8") from exc

    def encrypt(self, msg: str, *, random16: bytes | None = None) -> str:
        """base64 ciphertext of ``msg`` as WeCom builds it; pass random16 only in tests."""
        if random16 is None:
            random16 = os.urandom(_RANDOM_BYTES)
        elif len(random16) != _RANDOM_BYTES:
            raise ValueError(f"random16 must be {_RANDOM_BYTES} bytes")
        payload = msg.encode("utf-8")
        size = _RANDOM_BYTES + _LENGTH_BYTES + len(payload) + len(self._receive_id_bytes)
        pad = _PAD_BLOCK - size % _PAD_BLOCK
        plain = b"".join(
            (
                random16,
                len(payload).to_bytes(_LENGTH_BYTES, "big"),
                payload,
                self._receive_id_bytes,
                bytes((pad,)) * pad,
            )
        )
        encryptor = self._cipher.encryptor()
        return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode("ascii")

    def build_callback(
        self, msg: str, *, timestamp: str, nonce: str, agent_id: str = ""
    ) -> tuple[bytes, str]:
        """(POST body, msg_signature) exactly as WeCom would send ``msg`` to us."""
        encrypt = self.encrypt(msg)
        body = (
            f"<xml><ToUserName><![CDATA[{self._receive_id}]]></ToUserName>"
            f"<Encrypt><![CDATA[{encrypt}]]></Encrypt>"
            f"<AgentID><![CDATA[{agent_id}]]></AgentID></xml>"
        )
        return body.encode("utf-8"), self.signature(timestamp, nonce, encrypt)

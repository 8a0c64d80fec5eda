"""WeCom callback crypto: the published format, and a refusal for every malformed input."""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from services.users.wecom_crypto import (
    WeComCrypto,
    WeComCryptoError,
    _parse_xml_document,
    check_encoding_aes_key,
    parse_xml,
)

AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
TOKEN = "QDG6eK"
CORP_ID = "wwtestcorp0001"
RANDOM16 = bytes(range(16))
MSG = (
    "<xml><ToUserName><![CDATA[wwtestcorp0001]]></ToUserName>"
    "<FromUserName><![CDATA[sys]]></FromUserName><CreateTime>1700000000</CreateTime>"
    "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[change_external_contact]]></Event>"
    "<ChangeType><![CDATA[add_external_contact]]></ChangeType>"
    "<UserID><![CDATA[zhangsan]]></UserID><ExternalUserID><![CDATA[wmABC]]></ExternalUserID>"
    "<State><![CDATA[渠道A]]></State></xml>"
)


@pytest.fixture
def crypto() -> WeComCrypto:
    return WeComCrypto(TOKEN, AES_KEY, CORP_ID)


def sha1_signature(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode(), usedforsecurity=False).hexdigest()


def independent_encrypt(msg: str, receive_id: str, random16: bytes) -> str:
    """The format written out from the spec with plain cryptography calls, not our module."""
    key = base64.b64decode(AES_KEY + "=")
    body = random16 + len(msg.encode()).to_bytes(4, "big") + msg.encode() + receive_id.encode()
    pad = 32 - len(body) % 32
    body += bytes([pad]) * pad
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(body) + enc.finalize()).decode()


def independent_decrypt(encrypt: str) -> tuple[bytes, str, str]:
    key = base64.b64decode(AES_KEY + "=")
    dec = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = dec.update(base64.b64decode(encrypt)) + dec.finalize()
    plain = plain[: -plain[-1]]
    size = int.from_bytes(plain[16:20], "big")
    return plain[:16], plain[20 : 20 + size].decode(), plain[20 + size :].decode()


def raw_encrypt(plain: bytes) -> str:
    """Encrypt arbitrary (already padded) bytes with the test key, to forge broken plaintexts."""
    key = base64.b64decode(AES_KEY + "=")
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(plain) + enc.finalize()).decode()


def reason(exc_info: pytest.ExceptionInfo[WeComCryptoError]) -> str:
    return exc_info.value.reason


# -- the format -----------------------------------------------------------------


def test_signature_is_sha1_of_sorted_concatenation(crypto: WeComCrypto) -> None:
    # sorted: "1409659589" < "263014780" < "QDG6eK" < "abc" (digits, upper, lower case)
    expected = hashlib.sha1(b"1409659589263014780QDG6eKabc", usedforsecurity=False).hexdigest()
    assert crypto.signature("1409659589", "263014780", "abc") == expected
    assert crypto.signature("1409659589", "263014780", "abc") == sha1_signature(
        "abc", "263014780", "QDG6eK", "1409659589"
    )


def test_encrypt_with_fixed_random_matches_independent_implementation(
    crypto: WeComCrypto,
) -> None:
    assert crypto.encrypt(MSG, random16=RANDOM16) == independent_encrypt(MSG, CORP_ID, RANDOM16)
    assert independent_decrypt(crypto.encrypt(MSG, random16=RANDOM16)) == (RANDOM16, MSG, CORP_ID)


def test_decrypts_ciphertext_from_independent_implementation(crypto: WeComCrypto) -> None:
    encrypt = independent_encrypt(MSG, CORP_ID, b"\xfe" * 16)
    body = (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>"
        f"<Encrypt><![CDATA[{encrypt}]]></Encrypt><AgentID><![CDATA[1000002]]></AgentID></xml>"
    )
    sig = sha1_signature(TOKEN, "1700000000", "nonce42", encrypt)
    assert crypto.decrypt_callback(sig, "1700000000", "nonce42", body.encode()) == MSG


@pytest.mark.parametrize("msg", ["", "x", "a" * 11, "a" * 12, "中文消息" * 50, MSG])
def test_round_trip_through_build_callback(crypto: WeComCrypto, msg: str) -> None:
    body, sig = crypto.build_callback(msg, timestamp="1700000000", nonce="n1", agent_id="1000002")
    fields = parse_xml(body.decode())
    assert fields["ToUserName"] == CORP_ID
    assert fields["AgentID"] == "1000002"
    assert sig == sha1_signature(TOKEN, "1700000000", "n1", fields["Encrypt"])
    assert crypto.decrypt_callback(sig, "1700000000", "n1", body) == msg


def test_random_prefix_differs_between_messages(crypto: WeComCrypto) -> None:
    assert crypto.encrypt(MSG) != crypto.encrypt(MSG)


def test_url_verification(crypto: WeComCrypto) -> None:
    echostr = independent_encrypt("1616140317555161061", CORP_ID, RANDOM16)
    sig = sha1_signature(TOKEN, "1409659589", "263014780", echostr)
    assert crypto.verify_url(sig, "1409659589", "263014780", echostr) == "1616140317555161061"


def test_tencent_published_sample_vectors() -> None:
    # The sample in WeCom's docs and reference SDKs (WXBizMsgCrypt "Sample").
    official = WeComCrypto(
        "QDG6eK", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "wx5823bf96d3bd56c7"
    )
    echo = (
        "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
    )
    sig = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3"
    assert official.verify_url(sig, "1409659589", "263014780", echo) == "1616140317555161061"


def test_tencent_published_callback_vector() -> None:
    official = WeComCrypto(
        "QDG6eK", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "wx5823bf96d3bd56c7"
    )
    encrypt = (
        "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3Qczc"
        "dCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLj"
        "vd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMn"
        "vw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k"
        "22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2Yoy"
        "yH2uyPIGHBZZIs2pDBS8R07+qN+E7Q=="
    )
    body = (
        "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>"
        f"<Encrypt><![CDATA[{encrypt}]]></Encrypt><AgentID><![CDATA[218]]></AgentID></xml>"
    ).encode()
    sig = "477715d11cdb4164915debcba66cb864d751f3e6"
    inner = parse_xml(official.decrypt_callback(sig, "1409659813", "1372623149", body))
    assert inner == {
        "ToUserName": "wx5823bf96d3bd56c7",
        "FromUserName": "mycreate",
        "CreateTime": "1409659813",
        "MsgType": "text",
        "Content": "hello",
        "MsgId": "4561255354251345929",
        "AgentID": "218",
    }


# -- refusals ---------------------------------------------------------------------


def test_wrong_signature(crypto: WeComCrypto) -> None:
    body, sig = crypto.build_callback(MSG, timestamp="1", nonce="2")
    wrong = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    for bad in (wrong, "", sig.upper(), "签名"):
        with pytest.raises(WeComCryptoError) as exc_info:
            crypto.decrypt_callback(bad, "1", "2", body)
        assert reason(exc_info) == "invalid_signature"
    with pytest.raises(WeComCryptoError) as exc_info:  # replayed under another timestamp
        crypto.decrypt_callback(sig, "3", "2", body)
    assert reason(exc_info) == "invalid_signature"
    with pytest.raises(WeComCryptoError) as exc_info:
        WeComCrypto("other-token", AES_KEY, CORP_ID).decrypt_callback(sig, "1", "2", body)
    assert reason(exc_info) == "invalid_signature"


def _verify(crypto: WeComCrypto, echostr: str) -> str:
    """verify_url with a correct signature, so only the ciphertext can be at fault."""
    return crypto.verify_url(sha1_signature(TOKEN, "1", "2", echostr), "1", "2", echostr)


def test_tampered_ciphertext(crypto: WeComCrypto) -> None:
    raw = bytearray(base64.b64decode(crypto.encrypt("hello", random16=RANDOM16)))
    # Flipping a byte of the last block garbles the padding or the receive id.
    for index in (len(raw) - 1, len(raw) - 17, 0):
        tampered = bytearray(raw)
        tampered[index] ^= 0x01
        with pytest.raises(WeComCryptoError) as exc_info:
            _verify(crypto, base64.b64encode(bytes(tampered)).decode())
        assert reason(exc_info) in {"decrypt_failed", "invalid_receive_id"}


def test_flipping_the_first_block_corrupts_the_length_field(crypto: WeComCrypto) -> None:
    raw = bytearray(base64.b64decode(crypto.encrypt("hello", random16=RANDOM16)))
    # CBC: ciphertext byte 0 is XORed into plaintext byte 16, the length's high byte.
    raw[0] ^= 0xFF
    with pytest.raises(WeComCryptoError) as exc_info:
        _verify(crypto, base64.b64encode(bytes(raw)).decode())
    assert reason(exc_info) == "decrypt_failed"


@pytest.mark.parametrize("cut", [1, 15, 16, 32])
def test_truncated_ciphertext(crypto: WeComCrypto, cut: int) -> None:
    raw = base64.b64decode(crypto.encrypt(MSG, random16=RANDOM16))
    with pytest.raises(WeComCryptoError) as exc_info:
        _verify(crypto, base64.b64encode(raw[:-cut]).decode())
    assert reason(exc_info) in {"decrypt_failed", "invalid_receive_id"}


@pytest.mark.parametrize("echostr", ["", "not base64!!", "abc", "YWJj=", "YW Jj", "4pyT" * 3 + "="])
def test_bad_base64_or_empty(crypto: WeComCrypto, echostr: str) -> None:
    with pytest.raises(WeComCryptoError) as exc_info:
        _verify(crypto, echostr)
    assert reason(exc_info) == "decrypt_failed"


def test_wrong_receive_id(crypto: WeComCrypto) -> None:
    echostr = independent_encrypt("hello", "wwsomeoneelse", RANDOM16)
    with pytest.raises(WeComCryptoError) as exc_info:
        _verify(crypto, echostr)
    assert reason(exc_info) == "invalid_receive_id"
    other = WeComCrypto(TOKEN, AES_KEY, "wwother")
    body, sig = crypto.build_callback(MSG, timestamp="1", nonce="2")
    with pytest.raises(WeComCryptoError) as exc_info:
        other.decrypt_callback(sig, "1", "2", body)
    assert reason(exc_info) == "invalid_receive_id"


@pytest.mark.parametrize(
    "tail",
    [
        b"\x00" * 32,  # pad value 0
        b"\x21" * 32,  # pad value 33, above the block size 32
        b"\xff" * 32,
        b"\x05" * 31 + b"\x04",  # pad value 4, but the bytes before it are not 04
    ],
)
def test_wrong_padding(crypto: WeComCrypto, tail: bytes) -> None:
    msg = b"hi"
    body = RANDOM16 + len(msg).to_bytes(4, "big") + msg + CORP_ID.encode()
    body += b"\x01" * (-len(body) % 32)  # whole blocks, then a last block of bad padding
    with pytest.raises(WeComCryptoError) as exc_info:
        _verify(crypto, raw_encrypt(body + tail))
    assert reason(exc_info) == "decrypt_failed"


@pytest.mark.parametrize(
    "plain",
    [
        b"\x10" * 16,  # only padding: shorter than random + length
        RANDOM16 + b"\x00\x00" + b"\x0e" * 14,  # length field cut short
        RANDOM16 + (10_000).to_bytes(4, "big") + b"hi" + b"\x0a" * 10,  # length past the end
        RANDOM16 + (0xFFFFFFFF).to_bytes(4, "big") + b"\x0c" * 12,
        RANDOM16 + (2).to_bytes(4, "big") + b"\xff\xfe" + CORP_ID.encode() + b"\x0c" * 12,
    ],
)
def test_garbled_plaintext(crypto: WeComCrypto, plain: bytes) -> None:
    assert len(plain) % 16 == 0
    with pytest.raises(WeComCryptoError) as exc_info:
        _verify(crypto, raw_encrypt(plain))
    assert reason(exc_info) == "decrypt_failed"


@pytest.mark.parametrize(
    "key",
    [
        "",
        AES_KEY[:-1],
        AES_KEY + "H",
        AES_KEY + "=",
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF!",
        "abcdefghijklmnopqrstuvwxyz0123456789ABCD EF",
        "中" * 43,
    ],
)
def test_invalid_aes_key(key: str) -> None:
    with pytest.raises(WeComCryptoError) as exc_info:
        WeComCrypto(TOKEN, key, CORP_ID)
    assert reason(exc_info) == "invalid_aes_key"
    with pytest.raises(ValueError, match="EncodingAESKey"):
        check_encoding_aes_key(key)


def test_check_encoding_aes_key_accepts_a_pasted_key() -> None:
    assert check_encoding_aes_key(f"  {AES_KEY}\n") == AES_KEY


# -- XML ------------------------------------------------------------------------


def test_parse_xml_reads_cdata_and_plain_text() -> None:
    text = "<xml><A><![CDATA[x < y & z]]></A><B>42</B><C></C><D><![CDATA[]]></D></xml>"
    assert parse_xml(text) == {"A": "x < y & z", "B": "42", "C": "", "D": ""}


@pytest.mark.parametrize(
    "text",
    [
        '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaa">]><xml><A>&a;</A></xml>',
        '<!DOCTYPE xml [<!ENTITY a "1"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        "<xml><A>&b;</A></xml>",
        '<!DOCTYPE xml SYSTEM "http://127.0.0.1:1/x.dtd"><xml><A>1</A></xml>',
        '<!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><A>&x;</A></xml>',
        "<!DOCTYPE xml><xml><A>1</A></xml>",
    ],
)
def test_parse_xml_refuses_doctype_and_entities(text: str) -> None:
    with pytest.raises(WeComCryptoError) as exc_info:
        parse_xml(text)
    assert reason(exc_info) == "bad_xml"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not xml",
        "<xml><A>1</A>",
        "<xml><A>1</B></xml>",
        "<root><A>1</A></root>",
        "<xml><A>&undefined;</A></xml>",
        "<xml/><xml/>",
    ],
)
def test_parse_xml_refuses_malformed(text: str) -> None:
    with pytest.raises(WeComCryptoError) as exc_info:
        parse_xml(text)
    assert reason(exc_info) == "bad_xml"


def test_callback_without_encrypt_or_with_bad_body(crypto: WeComCrypto) -> None:
    for body in (
        b"<xml><ToUserName>x</ToUserName></xml>",
        b"\xff\xfe<xml/>",
        b"<!DOCTYPE xml [<!ENTITY e 'x'>]><xml><Encrypt>&e;</Encrypt></xml>",
    ):
        with pytest.raises(WeComCryptoError) as exc_info:
            crypto.decrypt_callback("sig", "1", "2", body)
        assert reason(exc_info) == "bad_xml"


# The flat documents WeCom sends are read without the XML parser: the answer (or
# the refusal) must be the parser's, whatever the text.
_TAGS = st.sampled_from(["A", "Event", "ChangeType", "x.y", "_z", "xml", "a-1", "1bad", "B:c"])
_TEXTS = st.lists(
    st.sampled_from([*"ab <>&;]![CDATA/x\t\n\r", "]]>", "<![CDATA[", "\x01", "\ufffe", "é", "𝄞"]),
    max_size=8,
).map("".join)
_CHILDREN = st.lists(
    st.tuples(_TAGS, _TEXTS, st.sampled_from(["cdata", "plain", "raw"])), max_size=5
)


def _outcome(parse: Callable[[str], dict[str, str]], text: str) -> object:
    try:
        return parse(text)
    except WeComCryptoError as exc:
        return exc.reason


@given(children=_CHILDREN, spacing=st.sampled_from(["", " ", "\n", "\t \n", "\r\n"]))
@settings(max_examples=400, deadline=None)
def test_flat_reading_agrees_with_the_xml_parser(
    children: list[tuple[str, str, str]], spacing: str
) -> None:
    inner = spacing.join(
        f"<{tag}><![CDATA[{text}]]></{tag}>"
        if how == "cdata"
        else f"<{tag}>{html.escape(text, quote=False)}</{tag}>"
        if how == "plain"
        else f"<{tag}>{text}</{tag}>"
        for tag, text, how in children
    )
    text = f"{spacing}<xml>{spacing}{inner}{spacing}</xml>{spacing}"
    assert _outcome(parse_xml, text) == _outcome(_parse_xml_document, text)


@pytest.mark.parametrize(
    "text",
    [
        "<xml></xml>",
        "<xml><A><![CDATA[a]]>b]]></A></xml>",
        "<xml><A>a]]>b</A></xml>",
        "<xml><A>1</A><A>2</A></xml>",
        "<xml><A>x\r\ny</A></xml>",
        "<xml><A><![CDATA[x\r\ny]]></A></xml>",
        "<xml><A>&amp;</A></xml>",
        "<xml><A><B>deeper</B></A><C>1</C></xml>",
        "\n<xml>\n<A>1</A>\n</xml>\n",
    ],
)
def test_flat_reading_agrees_on_edge_cases(text: str) -> None:
    assert _outcome(parse_xml, text) == _outcome(_parse_xml_document, text)

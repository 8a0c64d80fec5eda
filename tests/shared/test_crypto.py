"""Field encryption and blind index: confidentiality, binding, rotation, and key settings."""

from __future__ import annotations

import base64

import pytest

from shared.config import Settings
from shared.crypto import CryptoError, FieldCipher, get_cipher

SECRET = b"s" * 48
CONTEXT = b"tenant-1\x1fcontact.phone"
K2 = bytes(range(32))
K2_B64 = base64.b64encode(K2).decode()


@pytest.fixture
def cipher() -> FieldCipher:
    return FieldCipher.from_secret(SECRET)


@pytest.fixture
def rotated() -> FieldCipher:
    return FieldCipher.from_secret(SECRET, f"k2:{K2_B64}")


@pytest.mark.parametrize("plaintext", ["13812341234", "张三", "", "a" * 10_000])
def test_round_trip(cipher: FieldCipher, plaintext: str) -> None:
    token = cipher.encrypt(plaintext, context=CONTEXT)
    assert cipher.decrypt(token, context=CONTEXT) == plaintext
    assert cipher.key_id(token) == "k1"
    assert not cipher.needs_reencryption(token)


def test_token_layout(cipher: FieldCipher) -> None:
    token = cipher.encrypt("x", context=CONTEXT)
    assert token[:4] == b"\x01\x02k1"
    assert len(token) == 4 + 12 + 1 + 16


def test_ciphertext_hides_plaintext(cipher: FieldCipher) -> None:
    for plaintext in ["13812341234", "张三", "o6_bmjrPTlm6_2sgVt7hMZOPfL2M"]:
        assert plaintext.encode() not in cipher.encrypt(plaintext, context=CONTEXT)


def test_same_plaintext_gives_different_tokens(cipher: FieldCipher) -> None:
    tokens = {cipher.encrypt("13812341234", context=CONTEXT) for _ in range(50)}
    assert len(tokens) == 50
    nonces = {token[4:16] for token in tokens}
    assert len(nonces) == 50


def test_encrypt_many_gives_tokens_like_encrypt_with_fresh_nonces(cipher: FieldCipher) -> None:
    values = [("13812341234", CONTEXT), ("13812341234", CONTEXT), ("张三", b"other")] * 20
    tokens = cipher.encrypt_many(values)
    assert [cipher.decrypt(t, context=c) for t, (_, c) in zip(tokens, values, strict=True)] == [
        p for p, _ in values
    ]
    assert {len(t) for t in tokens[:2]} == {len(cipher.encrypt("13812341234", context=CONTEXT))}
    assert len({token[4:16] for token in tokens}) == len(values), "a nonce each"
    with pytest.raises(CryptoError):
        cipher.decrypt(tokens[2], context=CONTEXT)
    assert cipher.encrypt_many([]) == []


def test_wrong_context_fails(cipher: FieldCipher) -> None:
    token = cipher.encrypt("13812341234", context=CONTEXT)
    for other in [b"tenant-2\x1fcontact.phone", b"tenant-1\x1fcontact.name", b""]:
        with pytest.raises(CryptoError):
            cipher.decrypt(token, context=other)


def test_tampering_any_byte_fails(cipher: FieldCipher) -> None:
    token = cipher.encrypt("张三", context=CONTEXT)
    for position in range(len(token)):
        for flip in (0x01, 0x80):
            tampered = bytearray(token)
            tampered[position] ^= flip
            with pytest.raises(CryptoError):
                cipher.decrypt(bytes(tampered), context=CONTEXT)


def test_appended_bytes_fail(cipher: FieldCipher) -> None:
    token = cipher.encrypt("张三", context=CONTEXT)
    with pytest.raises(CryptoError):
        cipher.decrypt(token + b"\x00", context=CONTEXT)


def test_unknown_key_id_fails(cipher: FieldCipher) -> None:
    foreign = FieldCipher({"k9": K2}, "k9", b"i" * 32)
    token = foreign.encrypt("13812341234", context=CONTEXT)
    assert cipher.key_id(token) == "k9"
    assert cipher.needs_reencryption(token)
    with pytest.raises(CryptoError, match="unknown key id"):
        cipher.decrypt(token, context=CONTEXT)


def test_same_key_id_other_key_fails(cipher: FieldCipher) -> None:
    impostor = FieldCipher({"k1": K2}, "k1", b"i" * 32)
    token = impostor.encrypt("13812341234", context=CONTEXT)
    with pytest.raises(CryptoError):
        cipher.decrypt(token, context=CONTEXT)


def test_truncated_and_garbage_tokens_fail_with_crypto_error(cipher: FieldCipher) -> None:
    token = cipher.encrypt("13812341234", context=CONTEXT)
    garbage = [token[:length] for length in range(len(token))]
    garbage += [b"\x00" * 64, b"\xff" * 64, b"13812341234", bytes(range(256))]
    garbage += [b"\x01\x00" + b"\x00" * 40, b"\x01\x02\xe5\xbc" + b"\x00" * 40]
    for candidate in garbage:
        with pytest.raises(CryptoError):
            cipher.decrypt(candidate, context=CONTEXT)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x01",
        b"\x01\x02k1" + b"\x00" * 27,
        b"\x02\x02k1" + b"\x00" * 40,
        b"\x01\x02\xe5\xbc" * 20,
    ],
)
def test_key_id_of_malformed_token_fails_with_crypto_error(
    cipher: FieldCipher, garbage: bytes
) -> None:
    with pytest.raises(CryptoError):
        cipher.key_id(garbage)
    with pytest.raises(CryptoError):
        cipher.needs_reencryption(garbage)


def test_rotation(cipher: FieldCipher, rotated: FieldCipher) -> None:
    old = cipher.encrypt("13812341234", context=CONTEXT)
    new = rotated.encrypt("13812341234", context=CONTEXT)
    assert rotated.current_key_id == "k2"
    assert rotated.key_id(new) == "k2"
    assert not rotated.needs_reencryption(new)
    assert rotated.decrypt(old, context=CONTEXT) == "13812341234"
    assert rotated.needs_reencryption(old)
    with pytest.raises(CryptoError):
        cipher.decrypt(new, context=CONTEXT)


def test_rotation_keeps_all_extra_keys_for_decryption() -> None:
    k3 = base64.b64encode(b"\x03" * 32).decode()
    before = FieldCipher.from_secret(SECRET, f"k2:{K2_B64}")
    after = FieldCipher.from_secret(SECRET, f"k3:{k3}, k2:{K2_B64}")
    token = before.encrypt("张三", context=CONTEXT)
    assert after.current_key_id == "k3"
    assert after.decrypt(token, context=CONTEXT) == "张三"
    assert after.needs_reencryption(token)


def test_url_safe_and_standard_base64_are_the_same_key() -> None:
    key = b"\xfb\xff" * 16
    standard = base64.b64encode(key).decode()
    url_safe = base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert standard != url_safe
    token = FieldCipher.from_secret(SECRET, f"k2:{standard}").encrypt("x", context=CONTEXT)
    assert FieldCipher.from_secret(SECRET, f"k2:{url_safe}").decrypt(token, context=CONTEXT) == "x"


def test_blind_index(cipher: FieldCipher) -> None:
    index = cipher.blind_index("13812341234", kind="phone", tenant="t1")
    assert len(index) == 16
    assert index == cipher.blind_index("13812341234", kind="phone", tenant="t1")
    assert index == FieldCipher.from_secret(SECRET).blind_index(
        "13812341234", kind="phone", tenant="t1"
    )
    others = {
        cipher.blind_index("13812341234", kind="phone", tenant="t2"),
        cipher.blind_index("13812341234", kind="unionid", tenant="t1"),
        cipher.blind_index("13812341235", kind="phone", tenant="t1"),
        FieldCipher.from_secret(b"o" * 48).blind_index("13812341234", kind="phone", tenant="t1"),
    }
    assert index not in others
    assert len(others) == 4
    assert b"13812341234" not in index


def test_blind_index_is_not_rotated_with_encryption_keys(
    cipher: FieldCipher, rotated: FieldCipher
) -> None:
    assert cipher.blind_index("张三", kind="name", tenant="t1") == rotated.blind_index(
        "张三", kind="name", tenant="t1"
    )


def test_blind_index_rejects_separator_in_kind_or_tenant(cipher: FieldCipher) -> None:
    with pytest.raises(ValueError, match="separator"):
        cipher.blind_index("c", kind="a\x1fb", tenant="t")
    with pytest.raises(ValueError, match="separator"):
        cipher.blind_index("c", kind="a", tenant="b\x1ft")


def test_different_secrets_give_different_keys(cipher: FieldCipher) -> None:
    other = FieldCipher.from_secret(b"o" * 48)
    token = cipher.encrypt("13812341234", context=CONTEXT)
    with pytest.raises(CryptoError):
        other.decrypt(token, context=CONTEXT)


@pytest.mark.parametrize(
    "key_text",
    [
        "k2:" + "!" * 44,  # bad base64
        "k2:" + base64.b64encode(b"\x07" * 16).decode(),  # wrong length
        ":" + K2_B64,  # empty id
        K2_B64,  # no id at all
        "k 2:" + K2_B64,  # invalid id
        f"k2:{K2_B64},k2:{K2_B64}",  # repeated id
        "k1:" + K2_B64,  # would shadow the derived key
    ],
)
def test_invalid_extra_keys_name_the_setting_without_echoing_keys(key_text: str) -> None:
    with pytest.raises(ValueError, match="SCRM_ENCRYPTION_KEYS") as caught:
        FieldCipher.from_secret(SECRET, key_text)
    message = str(caught.value)
    for secret_part in (K2_B64, key_text.rpartition(":")[2]):
        assert secret_part[:8] not in message


def test_blank_extra_keys_mean_derived_key_only() -> None:
    assert FieldCipher.from_secret(SECRET, " , ").current_key_id == "k1"


def test_get_cipher_is_cached_and_reads_rotation_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCRM_ENCRYPTION_KEYS", raising=False)
    settings = Settings(SCRM_SECRET_KEY="x" * 40)
    plain = get_cipher(settings)
    assert get_cipher(settings) is plain
    assert plain.current_key_id == "k1"
    monkeypatch.setenv("SCRM_ENCRYPTION_KEYS", f"k2:{K2_B64}")
    rotated = get_cipher(Settings(SCRM_SECRET_KEY="x" * 40))
    assert rotated.current_key_id == "k2"
    token = plain.encrypt("张三", context=CONTEXT)
    assert rotated.decrypt(token, context=CONTEXT) == "张三"

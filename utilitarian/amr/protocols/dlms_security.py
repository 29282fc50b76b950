"""DLMS/COSEM security suite 0 (IEC 62056-5-3 / Green Book): AES-128-GCM authenticated encryption
of xDLMS APDUs, HLS-GMAC (mechanism 5) challenge answers, and the key files meters' secrets live in.

Keys are read from a file or a systemd credential at poll time and held only in `DlmsKeys`, whose
repr shows none of them. Nothing here logs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from utilitarian.amr.errors import MeterAuthenticationError, MeterUnsupported

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TAG_LENGTH = 12                    # security suite 0 truncates the GCM tag to 96 bits
SC_AUTHENTICATED = 0x10            # security control byte: bit 4 authentication
SC_AUTH_ENCRYPTED = 0x30           # bits 4 and 5: authenticated encryption, suite 0
KEY_NAMES = ("authentication_key", "encryption_key", "password", "system_title")


@dataclass(frozen=True, repr=False)
class DlmsKeys:
    """What a secured association needs. `system_title` (8 octets) is ours, not secret."""

    authentication_key: bytes | None = field(default=None, compare=False)
    encryption_key: bytes | None = field(default=None, compare=False)
    password: bytes | None = field(default=None, compare=False)
    system_title: bytes = b"UTL\x00\x00\x00\x00\x01"

    def __repr__(self) -> str:
        held = [n for n in ("authentication_key", "encryption_key", "password") if getattr(self, n)]
        return f"DlmsKeys(held={held}, system_title={self.system_title.hex()})"


def _hex_key(value: object, name: str, source: str) -> bytes:
    if not isinstance(value, str):
        raise MeterUnsupported(f"{source}: {name} must be a string of 32 hex digits")
    text = value.strip().replace(" ", "")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise MeterUnsupported(f"{source}: {name} is not hex") from None
    if len(key) != 16:
        raise MeterUnsupported(f"{source}: {name} must be 16 bytes (32 hex digits), not {len(key)}")
    return key


def key_file_path(reference: str) -> str:
    """`keys=` in a URL: an absolute path, or the name of a systemd credential
    (`$CREDENTIALS_DIRECTORY/NAME`, set by LoadCredential=/SetCredentialEncrypted=)."""
    if os.path.isabs(reference):
        return reference
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise MeterUnsupported(f"keys={reference!r} names a systemd credential, but "
                               "$CREDENTIALS_DIRECTORY is not set (use an absolute path outside a unit)")
    return os.path.join(directory, reference)


def load_keys(reference: str, key_id: str | None = None) -> DlmsKeys:
    """Read a key file (TOML): `authentication_key`, `encryption_key` (hex), `password` (LLS) and
    `system_title` (our own, 16 hex digits) at the top level, or in the table `[key_id]`.
    Errors name the file and the key, never a key's value."""
    path = key_file_path(reference)
    try:
        with open(path, "rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise MeterUnsupported(f"DLMS key file {path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError:
        # The parser's message may quote the line, and the line may hold a key.
        raise MeterUnsupported(f"DLMS key file {path}: not valid TOML") from None
    source = path
    if key_id is not None:
        table = document.get(key_id)
        if not isinstance(table, dict):
            raise MeterUnsupported(f"DLMS key file {path}: no table [{key_id}]")
        document, source = table, f"{path} [{key_id}]"
    unknown = sorted(k for k in document if k not in KEY_NAMES and not isinstance(document[k], dict))
    if unknown:
        raise MeterUnsupported(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(KEY_NAMES)}")
    values: dict[str, bytes] = {}
    for name in ("authentication_key", "encryption_key"):
        if name in document:
            values[name] = _hex_key(document[name], name, source)
    if "password" in document:
        if not isinstance(document["password"], str):
            raise MeterUnsupported(f"{source}: password must be a string")
        values["password"] = document["password"].encode("utf-8")
    if "system_title" in document:
        title = document["system_title"]
        try:
            raw = bytes.fromhex(str(title))
        except ValueError:
            raw = b""
        if len(raw) != 8:
            raise MeterUnsupported(f"{source}: system_title must be 16 hex digits")
        values["system_title"] = raw
    return DlmsKeys(**values)


def _aesgcm(key: bytes):
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError:  # pragma: no cover - a dependency; a broken install is reported, not raised raw
        raise MeterUnsupported("DLMS security needs the 'cryptography' package") from None
    return Cipher, algorithms.AES(key), modes


def _iv(system_title: bytes, invocation_counter: int) -> bytes:
    if len(system_title) != 8:
        raise MeterAuthenticationError(f"system title has {len(system_title)} octets, not 8")
    return system_title + (invocation_counter & 0xFFFFFFFF).to_bytes(4, "big")


def encrypt(plain: bytes, *, system_title: bytes, invocation_counter: int, keys: DlmsKeys) -> bytes:
    """Ciphertext and tag of `plain` with security control 0x30 (authenticated encryption)."""
    Cipher, aes, modes = _aesgcm(keys.encryption_key)
    encryptor = Cipher(aes, modes.GCM(_iv(system_title, invocation_counter))).encryptor()
    encryptor.authenticate_additional_data(bytes([SC_AUTH_ENCRYPTED]) + keys.authentication_key)
    body = encryptor.update(plain) + encryptor.finalize()
    return body + encryptor.tag[:TAG_LENGTH]


def decrypt(data: bytes, *, system_title: bytes, invocation_counter: int, keys: DlmsKeys,
            security_control: int = SC_AUTH_ENCRYPTED) -> bytes:
    """Plaintext of ciphertext+tag; a wrong key or a tampered APDU is MeterAuthenticationError."""
    if security_control != SC_AUTH_ENCRYPTED:
        raise MeterUnsupported(f"security control 0x{security_control:02x} (only 0x30, "
                               "authenticated encryption with suite 0, is supported)")
    if len(data) < TAG_LENGTH:
        raise MeterAuthenticationError("ciphered APDU shorter than its tag")
    from cryptography.exceptions import InvalidTag

    Cipher, aes, modes = _aesgcm(keys.encryption_key)
    body, tag = data[:-TAG_LENGTH], data[-TAG_LENGTH:]
    decryptor = Cipher(aes, modes.GCM(_iv(system_title, invocation_counter), tag,
                                      min_tag_length=TAG_LENGTH)).decryptor()
    decryptor.authenticate_additional_data(bytes([security_control]) + keys.authentication_key)
    try:
        return decryptor.update(body) + decryptor.finalize()
    except InvalidTag:
        raise MeterAuthenticationError("the meter's answer does not authenticate with our keys "
                                       "(wrong encryption or authentication key)") from None


def gmac(challenge: bytes, *, system_title: bytes, invocation_counter: int, keys: DlmsKeys) -> bytes:
    """HLS-GMAC answer f(challenge) = SC || IC || GMAC(SC || AK || challenge) (Green Book 9.2.7.4)."""
    Cipher, aes, modes = _aesgcm(keys.encryption_key)
    encryptor = Cipher(aes, modes.GCM(_iv(system_title, invocation_counter))).encryptor()
    encryptor.authenticate_additional_data(bytes([SC_AUTHENTICATED]) + keys.authentication_key + challenge)
    encryptor.finalize()
    return (bytes([SC_AUTHENTICATED]) + (invocation_counter & 0xFFFFFFFF).to_bytes(4, "big")
            + encryptor.tag[:TAG_LENGTH])

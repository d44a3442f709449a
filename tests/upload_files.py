"""Small real files for upload tests: a PNG any browser decodes, and the first
bytes of the other types WhatsApp sends, padded to a size."""
from __future__ import annotations

import struct
import zlib


def png(width: int = 3, height: int = 2, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A valid truecolour PNG of one colour."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def padded(head: bytes, size: int) -> bytes:
    return (head + b"\x00" * size)[:size]


def jpeg(size: int = 2048) -> bytes:
    return padded(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", size)


def webp(size: int = 2048, animated: bool = False) -> bytes:
    if animated:
        body = b"VP8X" + struct.pack("<I", 10) + bytes([0x02, 0, 0, 0]) + b"\x00" * 6
    else:
        body = b"VP8 " + struct.pack("<I", 10) + b"\x00" * 10
    return padded(b"RIFF" + struct.pack("<I", size - 8) + b"WEBP" + body, size)


def mp4(size: int = 4096) -> bytes:
    return padded(struct.pack(">I", 24) + b"ftypisom\x00\x00\x02\x00isomiso2", size)


def pdf(size: int = 4096) -> bytes:
    return padded(b"%PDF-1.7\n", size)


def ogg(size: int = 2048) -> bytes:
    return padded(b"OggS\x00\x02", size)

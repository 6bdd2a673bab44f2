"""Seeded mutations of maskdepth's inputs: bytes, tar headers, zips, JSON (metadata.json, checkpoint headers,
metrics.jsonl). Pure functions of (input, rng); `benchmarks/fuzz.py` and tests/test_mutations.py use them."""

from __future__ import annotations

import io
import json
import random
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

BLOCK = 512


# ---------------------------------------------------------------------------------------------------- bytes


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data))] if data else data


def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


def zero_header(data: bytes, rng: random.Random) -> bytes:
    n = min(len(data), rng.choice([16, 64, 512, 1024]))
    return bytes(n) + data[n:]


def png_claiming_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its IHDR claiming width x height (CRC fixed up): a decompression bomb's header."""
    ihdr = struct.pack(">II", width, height) + png[24:29]
    return png[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + png[33:]


BYTE_MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "truncate": truncate, "flip": flip_bytes, "zero-header": zero_header}


# ---------------------------------------------------------------------------------------------------- tar


def tar_headers(data: bytes) -> list[int]:
    """Offsets of the member headers of an uncompressed tar."""
    offs, off = [], 0
    while off + BLOCK <= len(data) and data[off:off + BLOCK] != bytes(BLOCK):
        offs.append(off)
        size = int(data[off + 124:off + 136].rstrip(b"\0 ").strip() or b"0", 8)
        off += BLOCK + -(-size // BLOCK) * BLOCK
    return offs


def set_tar_field(data: bytes, header: int, start: int, length: int, value: bytes) -> bytes:
    """Write `value` into a header field and fix up the header checksum, as a careful attacker would."""
    b = bytearray(data)
    b[header + start:header + start + length] = value.ljust(length, b"\0")[:length]
    b[header + 148:header + 156] = b" " * 8
    b[header + 148:header + 156] = b"%06o\0 " % sum(b[header:header + BLOCK])
    return bytes(b)


TAR_FIELDS: dict[str, tuple[int, int, list[bytes]]] = {
    "size": (124, 12, [b"-1", b"-1000", b"-0000001000", b"77777777777", b"+100", b"0x100", b"1_0",
                       b"\x80\0\0\0\0\0\0\0\0\x01\0\0", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\0"]),
    "type": (156, 1, [b"1", b"2", b"3", b"4", b"5", b"6", b"x", b"g", b"K", b"L"]),
    "name": (0, 100, [b"../../evil.json", b"/etc/evil.json", b"a/../../b.fg_bg.jpg", b"", b"noext",
                      b"x" * 100]),
}


def mutate_tar(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    heads = tar_headers(data)
    if not heads:
        return "tar-empty", data
    field = rng.choice(sorted(TAR_FIELDS))
    start, length, values = TAR_FIELDS[field]
    value = rng.choice(values)
    h = rng.choice(heads)
    out = set_tar_field(data, h, start, length, value)
    if field == "type" and value in (b"1", b"2"):  # a link member pointing outside
        out = set_tar_field(out, h, 157, 100, rng.choice([b"/etc/passwd", b"../../x"]))
    return f"tar-{field}={value[:12]!r}", out


# ---------------------------------------------------------------------------------------------------- zip


def mutate_zip(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """Rebuild the zip with one crafted change: a traversal or absolute name, a duplicate, a bomb member, a
    symlink entry, a size field that lies, or damage to the central directory."""
    kind = rng.choice(["traversal", "absolute", "duplicate", "bomb", "symlink", "central", "lying-size"])
    src = zipfile.ZipFile(io.BytesIO(data))
    names = src.namelist()
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        warnings.simplefilter("ignore", UserWarning)  # the duplicate name is the point
        for n in names:
            z.writestr(n, src.read(n))
        victim = rng.choice(names)
        if kind == "traversal":
            z.writestr("../../" + victim.split("/")[-1], src.read(victim))
        elif kind == "absolute":
            z.writestr("/tmp/" + victim.split("/")[-1], src.read(victim))
        elif kind == "duplicate":
            z.writestr(victim, b"not an image")
        elif kind == "bomb":
            z.writestr(victim.rsplit("/", 1)[0] + "/zzbomb.png", bytes(rng.choice([64, 200]) << 20))
        elif kind == "symlink":
            info = zipfile.ZipInfo(victim.rsplit("/", 1)[0] + "/zzlink.png")
            info.external_attr = (0o120777 << 16)
            z.writestr(info, "/etc/passwd")
    out = buf.getvalue()
    if kind == "central":
        i = out.rfind(b"PK\x01\x02")
        out = out[:i] + b"XX" + out[i + 2:]
    elif kind == "lying-size":
        i = out.find(b"PK\x01\x02")  # first central directory entry: uncompressed size at +24
        out = out[:i + 24] + struct.pack("<I", rng.choice([0, 1, 0xFFFFFFF0])) + out[i + 28:]
    return f"zip-{kind}", out


# ---------------------------------------------------------------------------------------------------- JSON

ODD_VALUES: list[Any] = ["abc", "", -1, 0, 10 ** 12, 1e308, float("nan"), None, True, [], {}, [1], {"a": 1},
                         "x" * 64, -1e9, 3.5]


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            out += _paths(v, prefix + (i,))
    return out


def mutate_json(obj: Any, rng: random.Random) -> tuple[str, Any]:
    """A copy of `obj` with one value replaced by an odd one, one key removed, or the root replaced."""
    obj = json.loads(json.dumps(obj))
    paths = _paths(obj)
    kind = rng.random()
    if kind < 0.08 or not paths:
        root = rng.choice([[], "text", 3, None, [obj]])
        return f"root={type(root).__name__}", root
    path = rng.choice(paths)
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    if kind < 0.3 and isinstance(parent, dict):
        del parent[path[-1]]
        return f"del {'.'.join(map(str, path))}", obj
    value = rng.choice(ODD_VALUES)
    parent[path[-1]] = value
    return f"{'.'.join(map(str, path))}={str(value)[:16]}", obj

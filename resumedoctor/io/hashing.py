"""Every digest resumedoctor computes: of files (streamed block by block), of bytes, and cache keys.

Two algorithms, named as seals record them: "sha256" (journals, dataset and curriculum hashes, cache
keys) and "xxh3_128" (a seal's content hashes: ~10 GiB/s from the `xxhash` wheel, against ~1.6 for
sha256; seals fall back to sha256 without it). Both libraries are imported only when a digest is made.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from resumedoctor.io.bounded_read import MiB, iter_blocks

SHA256 = "sha256"
XXH3_128 = "xxh3_128"
ALGORITHMS = (XXH3_128, SHA256)


def fastest_algorithm() -> str:
    """xxh3_128 when the xxhash wheel is installed, else sha256."""
    try:
        import xxhash  # noqa: F401
    except ImportError:
        return SHA256
    return XXH3_128


def new_hasher(name: str) -> Any:
    """A fresh hash object of one of ALGORITHMS; ValueError for any other name."""
    if name == XXH3_128:
        import xxhash

        return xxhash.xxh3_128()
    if name == SHA256:
        import hashlib

        return hashlib.sha256()
    raise ValueError(f"unknown hash {name!r}")


def digest_blocks(blocks: Iterable[bytes], name: str = SHA256) -> str:
    """The hex digest of the concatenated blocks."""
    hasher = new_hasher(name)
    for block in blocks:
        hasher.update(block)
    return hasher.hexdigest()


def file_digest(path: Path, name: str = SHA256, block_size: int = MiB) -> str:
    """The hex digest of a regular file (links followed), read through bounded_read.iter_blocks."""
    return digest_blocks(iter_blocks(path, block_size), name)


def file_digest_pipelined(path: Path, name: str, block_size: int = MiB) -> str:
    """file_digest, hashing while the next block is read: a reader thread feeds blocks, this thread hashes.

    xxhash releases the GIL, so the disk and the hash run at once. Reading several files at the same
    time instead was slower here (1.1 against 3.0 GiB/s cold): one file after another, each pipelined.
    """
    import queue
    import threading

    blocks: queue.Queue = queue.Queue(maxsize=4)
    failure: list[BaseException] = []

    def read() -> None:
        try:
            for block in iter_blocks(path, block_size):
                blocks.put(block)
        except BaseException as exc:  # noqa: BLE001 - handed to the hashing thread
            failure.append(exc)
        finally:
            blocks.put(None)

    reader = threading.Thread(target=read, name=f"read-{path.name}", daemon=True)
    reader.start()
    digest = digest_blocks(iter(blocks.get, None), name)
    reader.join()
    if failure:
        raise failure[0]
    return digest


def sha256_file(path: Path) -> str | None:
    """The sha256 of a regular file, a link not followed; None when there is no regular file there."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as handle:
        return digest_blocks(iter(lambda: handle.read(MiB), b""))


def sha256_bytes(data: bytes) -> str:
    return digest_blocks((data,))


def cache_key(text: str) -> str:
    """A cache file's name for a question spelled out as TEXT (32 hex digits of its sha256)."""
    return sha256_bytes(text.encode())[:32]

"""Check that a `torch.save` file is a whole zip archive, without unpickling anything.

`optimizer.pt`, `scheduler.pt`, `rng_state*.pth`, `scaler.pt` and `training_args.bin` are zip
archives of a pickle (`<name>/data.pkl`) plus raw storages. A cut-off copy loses the central
directory at the end of the file; a damaged one has member headers or data that do not add up.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from resumedoctor.bounded_read import open_regular
from resumedoctor.errors import ReasonError

LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"
_CRC_CHUNK = 16 * 1024 * 1024


@dataclass(frozen=True)
class ArchiveReport:
    path: Path
    size: int
    members: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    # The pre-1.6 torch format: a bare pickle that cannot be verified without unpickling.
    legacy_pickle: bool = False
    unreadable: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems and not self.legacy_pickle


def _is_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _member_problems(handle, info, data_limit: int) -> list[str]:
    handle.seek(info.header_offset)
    raw = handle.read(LOCAL_HEADER.size)
    if len(raw) < LOCAL_HEADER.size:
        return [f"{info.filename}: local header past the end of the file"]
    fields = LOCAL_HEADER.unpack(raw)
    if fields[0] != LOCAL_HEADER_SIGNATURE:
        return [f"{info.filename}: no local header at offset {info.header_offset}"]
    name_length, extra_length = fields[9], fields[10]
    data_end = info.header_offset + LOCAL_HEADER.size + name_length + extra_length + info.compress_size
    if data_end > data_limit:
        return [f"{info.filename}: data runs {data_end - data_limit} bytes past the end of the member area"]
    return []


def _crc_problems(archive, info) -> list[str]:
    import zipfile

    try:
        with archive.open(info) as member:
            while member.read(_CRC_CHUNK):
                pass
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return [f"{info.filename}: {exc}"]
    return []


def inspect_torch_archive(path: Path, *, deep: bool = False) -> ArchiveReport:
    """Structure of a torch zip archive; with `deep`, also the CRC of every member."""
    import zipfile  # here, not at import: most CLI runs never open an archive

    try:
        with open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(4)
            if size == 0:
                return ArchiveReport(path, 0, problems=("empty file (0 bytes)",))
            if head != LOCAL_HEADER_SIGNATURE:
                if _is_pickle(head):
                    return ArchiveReport(path, size, legacy_pickle=True)
                return ArchiveReport(path, size, problems=("not a zip archive (it does not start with a zip header)",))
            try:
                archive = zipfile.ZipFile(handle)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                return ArchiveReport(
                    path, size, problems=(f"zip central directory missing or unreadable ({exc}): the file is cut off",)
                )
            with archive:
                infos = archive.infolist()
                names = tuple(info.filename for info in infos)
                problems: list[str] = []
                if not infos:
                    problems.append("the archive has no members")
                pickles = tuple(name for name in names if name.endswith("data.pkl"))
                if infos and not pickles:
                    problems.append("no data.pkl member: not written by torch.save")
                # Members must end before the central directory starts.
                data_limit = getattr(archive, "start_dir", size)
                for info in infos:
                    problems += _member_problems(handle, info, data_limit)
                if deep and not problems:
                    for info in infos:
                        problems += _crc_problems(archive, info)
                return ArchiveReport(path, size, names, tuple(problems))
    except ReasonError as exc:  # a FIFO, device or socket: torch.load would block or fail on it
        return ArchiveReport(path, 0, problems=(exc.reason,), unreadable=True)
    except OSError as exc:
        return ArchiveReport(path, 0, problems=(f"cannot be read: {exc.strerror or exc}",), unreadable=True)

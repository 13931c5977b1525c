"""Check that a `torch.save` file is a whole zip archive, without unpickling anything.

`optimizer.pt`, `scheduler.pt`, `rng_state*.pth`, `scaler.pt` and `training_args.bin` are zip
archives of a pickle (`<name>/data.pkl`) plus raw storages. A cut-off copy loses the central
directory at the end of the file; a damaged one has member headers or data that do not add up.
The pickle that counts is the one torch.load reads (torch_pickle_member); an archive holding other
pickles that differ from it, or a data.pkl where torch does not look, was made to fool a reader.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from resumedoctor.errors import ReasonError
from resumedoctor.io.bounded_read import open_regular

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
    # Pickles that disagree with the one torch.load reads: a crafted archive (CKPT028), not damage.
    suspicious: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems and not self.legacy_pickle and not self.suspicious


class ArchivePickleError(ReasonError):
    """torch.load would read no pickle from this archive, or one of several that differ; `reason` is one line."""


def shifted_bytes(archive) -> int:
    """How far Python's zipfile moved every offset because the directory is not where the end record says.

    zipfile assumes bytes were prepended and shifts; torch's reader does not. A file whose two readers
    would see two different archives (one harmless, one not) is crafted: torch.save never writes one.
    """
    import zipfile

    try:
        end = zipfile._EndRecData(archive.fp)  # the raw end record, before zipfile's shift
    except (OSError, AttributeError, TypeError, ValueError):
        return 0
    if not end:
        return 0
    return archive.start_dir - end[zipfile._ECD_OFFSET]


def torch_pickle_member(archive):
    """The member torch.load unpickles: `<folder>/data.pkl`, where the folder is that of the archive's
    first member and the name is matched without regard to case, as torch's zip reader (miniz) does."""
    shift = shifted_bytes(archive)
    if shift:
        raise ArchivePickleError(f"its zip directory is {shift} bytes from where its end record puts it: "
                                 "torch and Python would read two different archives from this file")
    infos = archive.infolist()
    if not infos:
        raise ArchivePickleError("the archive has no members")
    folder, slash, _ = infos[0].filename.partition("/")
    if not slash:
        raise ArchivePickleError(f"the first member {infos[0].filename[:80]!r} is not in a folder: torch cannot load it")
    record = f"{folder}/data.pkl"
    matches = [info for info in infos if info.filename.lower() == record.lower()]
    if not matches:
        raise ArchivePickleError(f"torch reads {record[:120]}, which the archive does not hold")
    if len({(info.CRC, info.file_size) for info in matches}) > 1:
        raise ArchivePickleError(f"{len(matches)} members differ that torch could read as {record[:120]}")
    return matches[0]


def _pickle_disagreements(archive) -> list[str]:
    """Why the archive's pickles do not all agree with the one torch.load reads (empty for what torch.save writes)."""
    if shift := shifted_bytes(archive):
        return [f"its zip directory is {shift} bytes from where its end record puts it: torch and Python "
                "would read two different archives from this file"]
    pickles = [info for info in archive.infolist() if info.filename.lower().endswith(".pkl")]
    if not pickles:
        return []
    try:
        chosen = torch_pickle_member(archive)
    except ArchivePickleError as exc:
        where = ", ".join(info.filename[:80] for info in pickles[:3])
        return [f"{exc.reason} (its pickles: {where})"]
    differing = [info.filename[:80] for info in pickles if (info.CRC, info.file_size) != (chosen.CRC, chosen.file_size)]
    if differing:
        return [f"holds {len(differing)} other pickle(s) ({', '.join(differing[:3])}) that differ from the "
                f"{chosen.filename[:80]} torch reads"]
    return []


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
                pickles = tuple(name for name in names if name.lower().endswith("data.pkl"))
                if infos and not pickles:
                    problems.append("no data.pkl member: not written by torch.save")
                # Members must end before the central directory starts.
                data_limit = getattr(archive, "start_dir", size)
                for info in infos:
                    problems += _member_problems(handle, info, data_limit)
                if deep and not problems:
                    for info in infos:
                        problems += _crc_problems(archive, info)
                suspicious = tuple(_pickle_disagreements(archive))
                return ArchiveReport(path, size, names, tuple(problems), suspicious=suspicious)
    except ReasonError as exc:  # a FIFO, device or socket: torch.load would block or fail on it
        return ArchiveReport(path, 0, problems=(exc.reason,), unreadable=True)
    except OSError as exc:
        return ArchiveReport(path, 0, problems=(f"cannot be read: {exc.strerror or exc}",), unreadable=True)

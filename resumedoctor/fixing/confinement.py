"""Where the tool may write: inside the output_dir it was asked about, never through a link out of it.

An output_dir may come from anyone, and so may its `.resumedoctor/` folder (journals, quarantine). Every
path that fix, undo, seal or the journal writes, moves or deletes goes through `resolve_inside`: a
relative path without `..` or absolute parts, whose existing folders are real folders (a symlinked
`checkpoint-6/` or `.resumedoctor/` is refused, not followed). The folders of `.resumedoctor/` must also
be owned by the user running the tool.

The one file outside the output_dir a fix may change is the user's own recipe (named by `--config`). A
journal entry for it carries an HMAC made with a key in the user's state folder, so a journal crafted
elsewhere cannot make `fix` or `undo` write any other file outside.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path, PurePosixPath

from resumedoctor.engine.target import STATE_DIR
from resumedoctor.errors import ReasonError

KEY_BYTES = 32


class ConfinementError(ReasonError):
    """A path the tool would write, move or delete lies outside the output_dir, or goes through a link."""


def check_relative(relative: object) -> PurePosixPath:
    """A journal's relative path as a PurePosixPath; ConfinementError unless it stays below its root."""
    if not isinstance(relative, str) or not relative or "\0" in relative or "\\" in relative:
        raise ConfinementError(f"{relative!r} is not a relative path")
    path = PurePosixPath(relative)
    if path.is_absolute() or any(part in ("..", ".", "") for part in relative.split("/")):
        raise ConfinementError(f"{relative!r} is not a plain relative path (absolute, or with . or ..)")
    return path


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfinementError(f"cannot inspect {path}: {exc.strerror or exc}") from None


def resolve_inside(output_dir: Path, relative: object, *, final_may_be_folder: bool = False) -> Path:
    """output_dir / relative, after checking that every existing parent is a real folder (no link).

    The last component may be missing; when present it must not be a link, and must be a regular file
    (or, with `final_may_be_folder`, a folder: what a quarantine moves).
    """
    parts = check_relative(relative).parts
    current = Path(output_dir)
    for part in parts[:-1]:
        current = current / part
        info = _lstat(current)
        if info is None:
            break  # the rest does not exist yet: created below a checked real folder
        if stat.S_ISLNK(info.st_mode):
            raise ConfinementError(f"{current} is a symbolic link: refusing to write through it")
        if not stat.S_ISDIR(info.st_mode):
            raise ConfinementError(f"{current} is not a folder")
    path = Path(output_dir, *parts)
    info = _lstat(path)
    if info is not None:
        if stat.S_ISLNK(info.st_mode):
            raise ConfinementError(f"{path} is a symbolic link: refusing to replace or move it")
        allowed = stat.S_ISREG(info.st_mode) or (final_may_be_folder and stat.S_ISDIR(info.st_mode))
        if not allowed:
            raise ConfinementError(f"{path} is not a regular file{' or folder' if final_may_be_folder else ''}")
    return path


def info_exists(folder: Path) -> bool:
    return _lstat(folder) is not None


def relative_inside(output_dir: Path, path: Path) -> str | None:
    """PATH relative to output_dir (no `..`), or None when it lies outside (lexically)."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(output_dir))
    if relative == "." or relative == ".." or relative.startswith("../") or os.path.isabs(relative):
        return None
    return relative


def real_folder(path: Path, *, create: bool) -> Path:
    """PATH as a real folder owned by this user (created when missing and `create`); never a link."""
    info = _lstat(path)
    if info is None:
        if not create:
            return path
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfinementError(f"cannot create {path}: {exc.strerror or exc}") from None
        info = _lstat(path)
    if info is None or stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfinementError(f"{path} must be a real folder, not a link or a file; "
                               "move it away (it was not written by resumedoctor) and run again")
    if info.st_uid != os.getuid():
        raise ConfinementError(f"{path} belongs to user id {info.st_uid}, not to you ({os.getuid()}); "
                               "refusing to use it (its journal and backups are theirs: run as that user, or "
                               "move the folder out of the output_dir)")
    return path


def state_folder(output_dir: Path, *parts: str, create: bool = True) -> Path:
    """`<output_dir>/.resumedoctor[/parts...]`, each level a real folder of this user."""
    current = real_folder(Path(output_dir) / STATE_DIR, create=create)
    for part in parts:
        check_relative(part)
        if not create and not info_exists(current):
            return current.joinpath(*parts)
        current = real_folder(current / part, create=create)
    return current


# ---- the one outside file: the user's recipe ----------------------------------------------------


def _key_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "resumedoctor" / "journal.key"


def _journal_key() -> bytes:
    """The user's secret for journal entries outside an output_dir (created once, mode 0600)."""
    path = _key_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfinementError(f"cannot create the folder of your journal key {path} ({exc.strerror or exc}): "
                               "set XDG_STATE_HOME to a folder you can write") from None
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(descriptor, "rb") as handle:
        key = handle.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise ConfinementError(f"{path} is not a resumedoctor key; remove it and run again")
    return key


def outside_mac(transaction_id: str, path: str, old_sha256: str | None, new_sha256: str) -> str:
    """The seal on one outside write: only this user's resumedoctor could have journaled it."""
    message = "\0".join((transaction_id, path, old_sha256 or "-", new_sha256)).encode("utf-8", "surrogateescape")
    return hmac.new(_journal_key(), message, hashlib.sha256).hexdigest()


class UnverifiedOutsideWrite(ConfinementError):
    """An outside write whose HMAC is not this key's: forged, or journaled with another key (another
    machine, container or HOME). The two cannot be told apart; either way it is never acted on."""

    def __init__(self, reason: str, path: str):
        super().__init__(reason)
        self.path = path


def check_outside(transaction_id: str, entry: dict) -> Path:
    """The absolute path of an outside write whose HMAC is right; ConfinementError otherwise."""
    path, mac = entry.get("path"), entry.get("mac")
    if not isinstance(path, str) or not os.path.isabs(path) or not isinstance(mac, str):
        raise ConfinementError(f"{path!r} lies outside the output_dir")
    expected = outside_mac(transaction_id, path, entry.get("old_sha256"), entry.get("new_sha256"))
    if not hmac.compare_digest(expected.encode("ascii"), mac.encode("utf-8", "surrogatepass")):
        raise UnverifiedOutsideWrite(f"{path} lies outside the output_dir and this journal's entry for it was "
                                     f"not signed with your key ({_key_path()}): written elsewhere (another "
                                     "machine, container or HOME) or forged; refusing to touch it", path)
    return Path(path)

"""Checkpoints: one ``.npz`` file of arrays plus JSON metadata, written atomically, never
unpickled."""

import glob
import json
import os
import socket
import tempfile
import time
import zipfile

import numpy as np

META = "__meta__"
CHECKPOINT_FORMAT = 1
#: Temporary files are ``.checkpoint-<pid>@<host>.<pid namespace>-<random>.npz.tmp`` in the
#: checkpoint's folder: a process id means something only on its host and in its namespace.
TEMPORARY_PREFIX = ".checkpoint-"
TEMPORARY_SUFFIX = ".npz.tmp"
#: A temporary file of another host or namespace (whose process cannot be asked about), or of
#: an older fastopt (no process id), counts as left over after this long.
FOREIGN_TEMPORARY_AGE = 3600.0


def save_checkpoint(path, arrays, meta):
    """Write ``arrays`` (name -> ndarray) and ``meta`` (JSON-compatible) to ``path`` atomically.

    The data goes to a temporary file in the same folder, is flushed and fsynced, and then
    replaces ``path`` in one ``os.replace``: a crash at any point leaves either the previous
    checkpoint or the new one, never a torn file. The checkpoint gets the mode the umask
    gives a new file. A save that succeeds removes the temporary files that saves of this
    library killed before they finished (their process is gone) left in the folder.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    blob = np.frombuffer(json.dumps({"format": CHECKPOINT_FORMAT, **meta}).encode(), dtype=np.uint8)
    handle, temporary = tempfile.mkstemp(prefix=f"{TEMPORARY_PREFIX}{os.getpid()}@{_owner()}-",
                                         suffix=TEMPORARY_SUFFIX, dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays, **{META: blob})
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0o600 is not what a saved file gets
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    remove_left_over_temporaries(folder)


def remove_left_over_temporaries(folder):
    """Remove this library's temporary checkpoint files in ``folder`` whose saving process is
    gone (killed mid-save); a file of a living process, another save in progress, stays. A
    file of another host or pid namespace (a shared folder) goes only once it is an hour old."""
    owner = _owner()
    for name in glob.glob(os.path.join(glob.escape(folder), TEMPORARY_PREFIX + "*" + TEMPORARY_SUFFIX)):
        stem = os.path.basename(name)[len(TEMPORARY_PREFIX):]
        pid, _, rest = stem.partition("@")
        mine = pid.isdigit() and rest[:rest.rfind("-")] == owner
        try:
            if mine:
                if _alive(int(pid)):
                    continue
            elif time.time() - os.path.getmtime(name) < FOREIGN_TEMPORARY_AGE:
                continue
            os.unlink(name)
        except FileNotFoundError:
            pass  # its save finished, or another cleanup got there first


def _owner():
    """This host and pid namespace, as a name part (process ids mean something only there)."""
    try:
        namespace = "".join(ch for ch in os.readlink("/proc/self/ns/pid") if ch.isdigit())
    except OSError:
        namespace = "0"
    host = "".join(ch if ch.isalnum() or ch in "._" else "_" for ch in socket.gethostname())
    return f"{host}.{namespace}"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _umask():
    """This process's umask, read without changing it where the system says it (Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only once a save)
    os.umask(mask)
    return mask


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`: ``(arrays, meta)``. A file that is
    not one (missing, a folder, empty, truncated, another format) is refused, naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist or is not a file")
    try:
        # Our own handle: np.load leaves its file open when the archive is broken.
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
            if not hasattr(data, "files") or META not in data.files:
                raise ValueError(f"{path} is not a fastopt checkpoint (no metadata)")
            meta = json.loads(bytes(data[META]).decode())
            arrays = {name: data[name] for name in data.files if name != META}
    except (OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, KeyError,
            AttributeError) as error:
        raise ValueError(f"{path} is not a readable fastopt checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a fastopt checkpoint (metadata is not a mapping)")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has checkpoint format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    return arrays, meta

"""The project's error base classes, and how the ``jdrl`` command reports them.

Every error that a user can cause and fix (a wrong argument, a missing or corrupt file, a dataset
that does not fit) derives from :class:`JdrlError`; its message names the argument, key or file and
says what to do. ``jdrl`` (``jdrl.cli``) prints such an error as one line on stderr and exits with
the error's ``exit_code``: 2 for usage errors (:class:`UsageError`: the command line or a config is
wrong), 1 for failures at run time. Library callers catch them like any exception; the concrete
classes also derive from the builtin they replaced (``ValueError``, ``RuntimeError``, ``OSError``),
so existing ``except`` clauses keep working.
"""

from __future__ import annotations

import errno

__all__ = ["JdrlError", "UsageError", "describe_os_error"]


class JdrlError(Exception):
    """An error the user can fix; ``jdrl`` prints its message as one line and exits ``exit_code``."""

    exit_code: int = 1


class UsageError(JdrlError):
    """The command line or a config is wrong (unknown key, bad value, conflicting options)."""

    exit_code = 2


# What to do about the operating-system errors that a user can cause.
_OS_ERROR_HINTS = {
    errno.ENOSPC: "free some space on that device (nothing previously saved was replaced) and run again",
    errno.EDQUOT: "free some space in your quota (nothing previously saved was replaced) and run again",
    errno.EACCES: "check the permissions, or choose another path",
    errno.EPERM: "check the permissions, or choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "the path is a folder; give a file",
}


def describe_os_error(error: OSError) -> str:
    """One line for an ``OSError``: what failed, on which file, and what to do."""
    reason = error.strerror or str(error)
    if error.filename is not None:
        target = f"{error.filename}"
        if error.filename2 is not None:
            target += f" -> {error.filename2}"
        text = f"{reason}: {target}"
    else:
        text = str(error) if error.strerror is None else reason
    hint = _OS_ERROR_HINTS.get(error.errno) if error.errno is not None else None
    return f"{text} ({hint})" if hint else text

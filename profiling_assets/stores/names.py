"""The one place names from config or data are checked before they reach SQL or a path."""

from __future__ import annotations

import hashlib
import re

_TABLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Cohort keys become partition keys, SQL parameters and folder names: keep them boring.
_COHORT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")


class UnsafeNameError(ValueError):
    """A name that could reach SQL or a path is not of the allowed shape."""


def safe_table(name: str) -> str:
    if not _TABLE.fullmatch(name):
        raise UnsafeNameError(f"table name {name!r} is not [a-z_][a-z0-9_]*")
    return name


def is_valid_cohort(key: str) -> bool:
    return bool(_COHORT.fullmatch(key)) and ".." not in key


def safe_cohort(key: str) -> str:
    if not is_valid_cohort(key):
        raise UnsafeNameError(
            f"cohort {key!r} is not a valid partition key (letters, digits, '_', '-', '.')"
        )
    return key


def safe_file_stem(user_id: str) -> str:
    """User ids become file names: anything else is hashed into a stable safe name."""
    if _USER_ID.fullmatch(user_id) and ".." not in user_id:
        return user_id
    return "u_" + hashlib.sha256(user_id.encode()).hexdigest()[:20]

"""Expected failures of the CLI as one sentence each; anything else is a bug and keeps its
traceback. `--verbose` shows the traceback of every failure."""

from __future__ import annotations

import duckdb
import pydantic

from profiling_assets.commands.export import ExportError
from profiling_assets.commands.webserver import GraphQLError
from profiling_assets.core.contract import SourceContractError
from profiling_assets.core.identity import IdentityKeyError
from profiling_assets.core.spec import SpecError
from profiling_assets.models.base import ModelError
from profiling_assets.stores.names import UnsafeNameError

# What the user got wrong or must fix, by exception type, in the order they are tried
# (subclasses before their bases).
_PREFIXES: tuple[tuple[type[BaseException], str], ...] = (
    (SpecError, "业务规格无效 / invalid business spec"),
    (SourceContractError, "数据源不符合约定 / source does not match the contract"),
    (IdentityKeyError, "缺少身份密钥 / identity key missing or invalid"),
    (GraphQLError, "Dagster 网页服务出错 / Dagster webserver error"),
    (ModelError, "模型服务不可用 / model backend failed"),
    (ExportError, "无法导出 / cannot export"),
    (UnsafeNameError, "名称不安全 / unsafe name"),
    (duckdb.IOException, "无法打开 DuckDB 文件 / cannot open a DuckDB file"),
    (duckdb.Error, "DuckDB 出错 / DuckDB error"),
    (FileNotFoundError, "找不到文件 / file not found"),
    (PermissionError, "没有权限 / permission denied"),
    (ConnectionError, "连不上服务 / server unreachable"),
    (TimeoutError, "服务超时 / server timed out"),
)
MAX_CHARS = 400


def _one_line(text: str) -> str:
    parts = [line.strip() for line in text.splitlines() if line.strip()]
    joined = "；".join(parts)
    return joined if len(joined) <= MAX_CHARS else joined[: MAX_CHARS - 1] + "…"


def _settings_error(exc: pydantic.ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    # Settings come from PROFILING_* variables: name the variable the user has to change.
    name = f"PROFILING_{field.upper()}" if exc.title == "Settings" else field
    extra = exc.error_count() - 1
    more = f"（另有 {extra} 处 / {extra} more）" if extra else ""
    return f"配置无效 / invalid setting {name}: {first['msg']} (got {first.get('input')!r}){more}"


def explain(exc: BaseException) -> str | None:
    """The one sentence for an expected failure, or None for an unexpected one."""
    if isinstance(exc, pydantic.ValidationError):
        return _one_line(_settings_error(exc))
    for kind, prefix in _PREFIXES:
        if isinstance(exc, kind):
            detail = str(exc)
            if isinstance(exc, OSError) and exc.filename and exc.strerror is not None:
                detail = f"{exc.filename}（{exc.strerror}）"
            return _one_line(f"{prefix}: {detail}")
    return None

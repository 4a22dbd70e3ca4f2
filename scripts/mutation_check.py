"""Mutation check: does the test suite notice when a promise is broken?

Each mutant is a small textual patch to one module that keeps a promise (vectors upserted by
chunk id, settled profile inputs, chunk ids and overlap, code versions, PII masking, identity
hashing and guards, the profile checks), plus the targeted tests that should catch it. The
repository is copied to a temp folder once; each mutant is applied there, its tests run with
the copy first on PYTHONPATH, and the file is restored. A mutant is killed when its tests
fail. Prints each mutant, killed or survived, and the share killed.

    .venv/bin/python scripts/mutation_check.py            # all mutants
    .venv/bin/python scripts/mutation_check.py -k vectors # only ids containing "vectors"
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PER_MUTANT_TIMEOUT_S = 300
T = "profiling_assets_tests/"


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str  # relative to the repo
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest arguments: node ids, files, `-k` expressions


VECTORS = "profiling_assets/stores/vectors.py"
PLAN = "profiling_assets/core/profiling/plan.py"
STORED = "profiling_assets/core/profiling/stored.py"
CHUNKING = "profiling_assets/core/chunking.py"
PII = "profiling_assets/core/pii.py"
IDENTITY = "profiling_assets/core/identity.py"
ANSWER = "profiling_assets/core/profiling/answer.py"
FACT_RULES = "profiling_assets/core/profiling/fact_rules.py"
OUTCOME = "profiling_assets/core/profiling/outcome.py"
UPSERT_TESTS = (f"{T}test_incremental.py", "-k", "upsert or moving or delete")
INPUT_TESTS = (f"{T}test_profile_inputs.py",)
CHUNK_TESTS = (f"{T}test_chunking.py",)
SWITCH_TESTS = (f"{T}test_code_versions.py", "-k", "each_switch or chunking_settings")
PII_TESTS = (f"{T}test_pii_series.py", f"{T}test_documents.py", "-k", "pii or several or column")
IDENTITY_FAST = (
    "phone_numbers or placeholders or case_folds or keyed_hashes or denied or short_key"
    " or sharing_any or front_desk or above_the_limit or stable_when or two_people or split"
    " or limit_is_exact"
)
IDENTITY_TESTS = (f"{T}test_identity.py", "-k", IDENTITY_FAST)
CHECK_TESTS = (
    f"{T}test_llm_profiles.py",
    f"{T}test_security.py",
    f"{T}test_profile_checks.py",
    "-k",
    "contradiction or citation or leaked_inside or outage",
)

MUTANTS: tuple[Mutant, ...] = (
    # -- stores/vectors.py: upsert by chunk id, deletes, cohort filter, id guard -------------
    Mutant(
        "vectors: merge_insert replaced by a plain add",
        VECTORS,
        """            .merge_insert("chunk_id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(data)""",
        "            .add(data)",
        UPSERT_TESTS,
    ),
    Mutant(
        "vectors: matched rows not updated",
        VECTORS,
        "            .when_matched_update_all()\n",
        "",
        UPSERT_TESTS,
    ),
    Mutant(
        "vectors: absent chunks never deleted",
        VECTORS,
        "stale = sorted(self.cohort_ids(cohort) - keep)",
        "stale: list[str] = []",
        UPSERT_TESTS,
    ),
    Mutant(
        "vectors: cohort filter dropped",
        VECTORS,
        """query = table.search().where(f"cohort = '{safe_cohort(cohort)}'").limit(None)""",
        "query = table.search().limit(None)",
        UPSERT_TESTS,
    ),
    Mutant(
        "vectors: non-hex id guard off",
        VECTORS,
        "if not all(_CHUNK_ID.match(i) for i in batch):",
        "if False:",
        UPSERT_TESTS,
    ),
    # -- core/profiling/stored.py and plan.py: settled keys and the input key ----------------
    Mutant(
        "profile plan: one key per user, oldest wins (issue 15's bug)",
        STORED,
        """            if kind in SETTLING_KINDS:
                settled.setdefault(user_id, set()).add(key)""",
        """            if kind in SETTLING_KINDS:
                settled.setdefault(user_id, {key})""",
        INPUT_TESTS,
    ),
    Mutant(
        "profile plan: transport failures settle",
        STORED,
        "if kind in SETTLING_KINDS:",
        "if True:",
        INPUT_TESTS,
    ),
    Mutant(
        "profile plan: retry flag ignored",
        STORED,
        "if not retry_failed and failures.height:",
        "if failures.height:",
        INPUT_TESTS,
    ),
    Mutant(
        "profile plan: failures of any model settle",
        STORED,
        """        mine = failures.filter(pl.col("llm_identity") == llm_identity)
        kinds""",
        """        mine = failures
        kinds""",
        INPUT_TESTS,
    ),
    Mutant(
        "profile plan: evidence dropped from the input key",
        PLAN,
        """        "evidence": [(e.question_id, e.chunk_id, e.rank) for e in evidence],\n""",
        "",
        INPUT_TESTS,
    ),
    Mutant(
        "profile plan: LLM dropped from the input key",
        PLAN,
        """        "llm": llm_identity,\n""",
        "",
        INPUT_TESTS,
    ),
    Mutant(
        "profile plan: answer schema dropped from the input key",
        PLAN,
        """        "answer_schema": answer_schema,\n""",
        "",
        INPUT_TESTS,
    ),
    Mutant(
        "profile plan: latest profile is the oldest",
        STORED,
        """.unique("user_id", keep="last")
        .sort("user_id")""",
        """.unique("user_id", keep="first")
        .sort("user_id")""",
        INPUT_TESTS,
    ),
    Mutant(
        "profile plan: facts as of the latest record, not its month end",
        PLAN,
        "    return next_month - timedelta(days=1)",
        "    return latest_day",
        INPUT_TESTS,
    ),
    # -- core/chunking.py: ids, overlap window, slices ----------------------------------------
    Mutant(
        "chunking: chunk id without the user",
        CHUNKING,
        """hashlib.sha256(f"{user_id}\\n{text}".encode())""",
        """hashlib.sha256(f"{text}".encode())""",
        CHUNK_TESTS,
    ),
    Mutant(
        "chunking: overlap window grows past 150",
        CHUNKING,
        "OVERLAP_SLACK_ABOVE = 30",
        "OVERLAP_SLACK_ABOVE = 60",
        CHUNK_TESTS,
    ),
    Mutant(
        "chunking: character overlap halved",
        CHUNKING,
        "tail = text[-options.overlap :]",
        "tail = text[-(options.overlap // 2) :]",
        CHUNK_TESTS,
    ),
    Mutant(
        "chunking: slices skip characters",
        CHUNKING,
        "rest = rest[room - 6 :]",
        "rest = rest[room - 4 :]",
        CHUNK_TESTS,
    ),
    Mutant(
        "chunking: long items not cut",
        CHUNKING,
        "room = max(size // 2, 60)",
        "room = max(size * 4, 60)",
        CHUNK_TESTS,
    ),
    Mutant(
        "chunking: overlap carried across sections",
        CHUNKING,
        """            if new_section:
                body, carried = [], None""",
        """            if False:
                body, carried = [], None""",
        CHUNK_TESTS,
    ),
    # -- code-version builders in assets/*.py -------------------------------------------------
    Mutant(
        "code version: LLM dropped from user_profiles",
        "profiling_assets/assets/profiles.py",
        "|{spec_hash}|{llm_id}|{schema}|",
        "|{spec_hash}|{schema}|",
        SWITCH_TESTS,
    ),
    Mutant(
        "code version: prompt version dropped from user_profiles",
        "profiling_assets/assets/profiles.py",
        'code_version=f"{PROFILES_CODE_VERSION}|{PROMPT_VERSION}|',
        'code_version=f"{PROFILES_CODE_VERSION}|',
        SWITCH_TESTS,
    ),
    Mutant(
        "code version: embedder dropped from user_profiles",
        "profiling_assets/assets/profiles.py",
        "|{schema}|{embedder_id}",
        "|{schema}",
        SWITCH_TESTS,
    ),
    Mutant(
        "code version: reranker dropped from profile_evidence",
        "profiling_assets/assets/retrieval.py",
        """f"{EVIDENCE_CODE_VERSION}|{questions_hash}|{embedder_id}|{reranker_id}\"""",
        """f"{EVIDENCE_CODE_VERSION}|{questions_hash}|{embedder_id}\"""",
        SWITCH_TESTS,
    ),
    Mutant(
        "code version: top-k dropped from profile_evidence",
        "profiling_assets/assets/retrieval.py",
        """f"|k{settings.evidence_top_k}|n{settings.evidence_top_n}\"""",
        """f"|n{settings.evidence_top_n}\"""",
        SWITCH_TESTS,
    ),
    Mutant(
        "code version: embedder dropped from chunk_embeddings",
        "profiling_assets/assets/retrieval.py",
        'code_version=f"{EMBEDDINGS_CODE_VERSION}|{embedder_id}"',
        'code_version=f"{EMBEDDINGS_CODE_VERSION}"',
        SWITCH_TESTS,
    ),
    Mutant(
        "code version: overlap dropped from document_chunks",
        "profiling_assets/assets/documents.py",
        "|{settings.chunk_size}|{settings.chunk_overlap}",
        "|{settings.chunk_size}",
        SWITCH_TESTS,
    ),
    Mutant(
        "code version: LLM dropped from cohort_report",
        "profiling_assets/assets/insights.py",
        'code_version=f"{REPORT_CODE_VERSION}|{report_hash}|{llm_id}"',
        'code_version=f"{REPORT_CODE_VERSION}|{report_hash}"',
        SWITCH_TESTS,
    ),
    # -- core/pii.py -----------------------------------------------------------------------------
    Mutant(
        "pii: full-width digits not folded",
        PII,
        """    for pattern, tag in _PATTERNS:
        probe = text.translate(_HALF_WIDTH)""",
        """    for pattern, tag in _PATTERNS:
        probe = text""",
        PII_TESTS,
    ),
    Mutant(
        "pii: phones starting 19x missed",
        PII,
        r"1[3-9]\d[ -]?\d{4}",
        r"1[3-8]\d[ -]?\d{4}",
        PII_TESTS,
    ),
    Mutant(
        "pii: ID numbers of people born in the 1900s missed",
        PII,
        r"\d{6}(?:19|20)\d{2}",
        r"\d{6}(?:20)\d{2}",
        PII_TESTS,
    ),
    Mutant(
        "pii: cheap pre-filter needs 12 digits",
        PII,
        '_MAY_HOLD_PII = r"[@＠]|(?:\\d\\D*){11}"',
        '_MAY_HOLD_PII = r"[@＠]|(?:\\d\\D*){12}"',
        PII_TESTS,
    ),
    Mutant(
        "pii: ids holding PII kept as they are",
        PII,
        """    if not find_pii(value):
        return value""",
        """    if find_pii(value) or not find_pii(value):
        return value""",
        PII_TESTS,
    ),
    # -- core/identity.py ---------------------------------------------------------------------
    Mutant(
        "identity: 8-character keys accepted",
        IDENTITY,
        "if not value or len(value) < 16:",
        "if not value or len(value) < 8:",
        IDENTITY_TESTS,
    ),
    Mutant(
        "identity: plain SHA-256, no key",
        IDENTITY,
        """digest = hmac.new(key, f"{id_type}\\x1f{value}".encode(), hashlib.sha256).digest()""",
        """digest = hashlib.sha256(f"{id_type}\\x1f{value}".encode()).digest()""",
        IDENTITY_TESTS,
    ),
    Mutant(
        "identity: no NFKC normalisation",
        IDENTITY,
        """text = value.cast(pl.String).str.normalize("NFKC").str.strip_chars()""",
        """text = value.cast(pl.String).str.strip_chars()""",
        IDENTITY_TESTS,
    ),
    Mutant(
        "identity: 0086 prefix not stripped",
        IDENTITY,
        r"""national = digits.str.replace(r"^(?:0086|86)(1\d{10})$", "${1}")""",
        r"""national = digits.str.replace(r"^(?:86)(1\d{10})$", "${1}")""",
        IDENTITY_TESTS,
    ),
    Mutant(
        "identity: member numbers case-sensitive",
        IDENTITY,
        'CASE_BLIND_TYPES = frozenset({"member_no", "device_id", "email"})',
        'CASE_BLIND_TYPES = frozenset({"device_id", "email"})',
        IDENTITY_TESTS,
    ),
    Mutant(
        "identity: shared-id guard one too lenient",
        IDENTITY,
        """many = pl.col("links") > rules.max_people_per_id\n""",
        """many = pl.col("links") > rules.max_people_per_id + 1\n""",
        IDENTITY_TESTS,
    ),
    Mutant(
        "identity: oversize components merged anyway",
        IDENTITY,
        """    if oversize.height:
        # Not merged""",
        """    if False:
        # Not merged""",
        IDENTITY_TESTS,
    ),
    # -- core/profiling/ checks -----------------------------------------------------------------
    Mutant(
        "profiling: unknown citations accepted",
        ANSWER,
        "return sorted(profile.cited_ids() - evidence_ids)",
        "return []",
        CHECK_TESTS,
    ),
    Mutant(
        "profiling: prompt leaks accepted",
        ANSWER,
        """    leaked = find_prompt_leaks(profile)
    if leaked:""",
        """    leaked = find_prompt_leaks(profile)
    if False:""",
        CHECK_TESTS,
    ),
    Mutant(
        "profiling: intent probability outside its band accepted",
        FACT_RULES,
        """        low, high = self.allowed_range
        return low <= probability <= high""",
        """        return True""",
        CHECK_TESTS,
    ),
    Mutant(
        "profiling: high spending with no orders accepted",
        FACT_RULES,
        """return (level == "高" and (facts.total_spend <= 0 or facts.order_count == 0)) or (""",
        """return (level == "高" and facts.total_spend < 0) or (""",
        CHECK_TESTS,
    ),
    Mutant(
        "profiling: one failed user is an outage",
        OUTCOME,
        "return bool(outcomes) and all(o.transport_only for o in outcomes)",
        "return bool(outcomes) and any(o.transport_only for o in outcomes)",
        CHECK_TESTS,
    ),
)


def copy_repo(target: Path) -> Path:
    """The working tree (package, tests, config) without data, caches or the venv."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "data", "__pycache__", ".ruff_cache", ".pytest_cache", "*.egg-info"
    )
    for name in ("profiling_assets", "profiling_assets_tests"):
        shutil.copytree(REPO / name, target / name, ignore=ignore)
    for name in ("pyproject.toml", "dagster.yaml", "workspace.yaml", "conftest.py"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, target / name)
    return target


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[bool, float, str]:
    """(passed, seconds, last lines of output) of the tests in the copy."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=PER_MUTANT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - started, "timed out"
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    return done.returncode == 0, time.perf_counter() - started, " | ".join(tail)


def apply(copy: Path, mutant: Mutant) -> str:
    """Patch the copy; returns the original text to restore."""
    path = copy / mutant.path
    original = path.read_text(encoding="utf-8")
    found = original.count(mutant.old)
    if found != 1:
        raise SystemExit(f"mutant {mutant.id!r}: patch found {found} times in {mutant.path}")
    path.write_text(original.replace(mutant.old, mutant.new), encoding="utf-8")
    return original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only mutants whose id contains this text")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if args.k in m.id]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        copy = copy_repo(Path(tmp))
        probe = subprocess.run(
            [sys.executable, "-c", "import profiling_assets; print(profiling_assets.__file__)"],
            cwd=copy,
            env={**os.environ, "PYTHONPATH": str(copy)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not probe.startswith(str(copy)):
            raise SystemExit(f"the copy is not the package imported: {probe}")
        for mutant in mutants:  # every patch applies, before any time is spent on tests
            found = (copy / mutant.path).read_text(encoding="utf-8").count(mutant.old)
            if found != 1:
                raise SystemExit(f"mutant {mutant.id!r}: patch found {found} times")
        # Every group of tests passes on the unmutated copy, or a "kill" would mean nothing.
        for tests in dict.fromkeys(m.tests for m in mutants):
            passed, seconds, tail = run_tests(copy, tests)
            print(f"baseline {' '.join(tests)}: {'pass' if passed else 'FAIL'} ({seconds:.0f} s)")
            if not passed:
                print(f"  {tail}")
                return 2
        killed = 0
        for mutant in mutants:
            original = apply(copy, mutant)
            try:
                passed, seconds, tail = run_tests(copy, mutant.tests)
            finally:
                (copy / mutant.path).write_text(original, encoding="utf-8")
            killed += not passed
            verdict = "survived" if passed else "killed"
            print(f"{verdict:8} {seconds:5.0f} s  {mutant.id}", flush=True)
    total = len(mutants)
    share = killed / total if total else 0.0
    minutes = (time.perf_counter() - started) / 60
    print(f"\nkilled {killed}/{total} = {share:.0%} in {minutes:.1f} min")
    return 0 if share >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())

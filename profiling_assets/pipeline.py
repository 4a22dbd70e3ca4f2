"""Assemble assets, checks, resources, sensors and jobs for one configuration."""

from __future__ import annotations

import dagster as dg

from profiling_assets.assets.documents import build_document_assets
from profiling_assets.assets.exports import build_export_assets
from profiling_assets.assets.identity import build_identity_assets
from profiling_assets.assets.insights import build_insight_assets
from profiling_assets.assets.profiles import build_profile_assets
from profiling_assets.assets.quality import build_quality_assets
from profiling_assets.assets.raw import build_raw_assets
from profiling_assets.assets.retrieval import build_retrieval_assets
from profiling_assets.automation import build_profile_schedule
from profiling_assets.config import Settings
from profiling_assets.core.spec import ProfileSpec, load_spec
from profiling_assets.core.spec_rules import build_policy
from profiling_assets.executors import build_executor
from profiling_assets.models.registry import model_identities
from profiling_assets.partitions import build_cohort_sensor, cohort_partitions
from profiling_assets.resources import ModelHub
from profiling_assets.warehouse_resource import warehouse_resource

PROFILE_JOB = "profile_job"


def build_definitions(settings: Settings, spec: ProfileSpec | None = None) -> dg.Definitions:
    """Everything of one configuration; the business spec is validated here, before any
    asset can run (`SpecError` names the file and field)."""
    spec = spec or load_spec(settings.spec)
    # Once per load: an Ollama identity asks the server, and every factory needs them.
    identities = model_identities(settings)
    documents, documents_check, chunks = build_document_assets(settings, spec)
    identity = build_identity_assets(settings, spec)
    profile_job = dg.define_asset_job(
        PROFILE_JOB,
        # Stitching covers the whole source, not a cohort: it has its own job and sensor.
        selection=dg.AssetSelection.all() - dg.AssetSelection.groups("identity"),
        partitions_def=cohort_partitions,
        description="Every asset of one cohort, source rows to profiles.",
    )
    return dg.Definitions(
        assets=[
            *identity.assets,
            build_raw_assets(settings, spec),
            documents,
            chunks,
            *build_retrieval_assets(settings, spec, identities),
            *build_profile_assets(settings, spec, identities),
            *build_export_assets(identities),
            *build_insight_assets(settings, spec, identities),
            *build_quality_assets(settings, spec, identities),
        ],
        asset_checks=[documents_check],
        jobs=[profile_job, *identity.jobs],
        executor=build_executor(settings),
        schedules=[build_profile_schedule(settings, PROFILE_JOB)],
        sensors=[
            build_cohort_sensor(settings),
            *identity.sensors,
        ],
        resources={
            "duckdb": warehouse_resource(settings),
            "models": ModelHub(settings=settings, policy=build_policy(spec), identities=identities),
        },
    )

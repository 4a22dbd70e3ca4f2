"""`.env` entries for our settings only.

`dagster dev` loads `.env` from the working directory, so the code server sees what is in
it; `Settings` reads the same file so the CLI computes the same code versions. That file
also holds other tools' variables (DAGSTER_HOME, API keys): they are none of ours, and with
`extra="forbid"` pydantic-settings would refuse them, so they are left out here.
"""

from __future__ import annotations

from typing import Any

from pydantic_settings import DotEnvSettingsSource


class OwnKeysDotEnvSource(DotEnvSettingsSource):
    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {key: value for key, value in super().__call__().items() if key in fields}

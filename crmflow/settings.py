"""Settings from `CRMFLOW_*` environment variables and an optional `crmflow.toml`.

Environment variables win over the file. With no Temporal address set, crmflow runs the
embedded default: a SQLite file and the Temporal dev server under `home` (`.crmflow/`).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _toml_file() -> Path:
    return Path(os.environ.get("CRMFLOW_CONFIG", "crmflow.toml"))


class Settings(BaseSettings):
    """Everything an operator can set. Every field is `CRMFLOW_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="CRMFLOW_", extra="forbid")

    home: Path = Field(Path(".crmflow"), description="Folder for the embedded stack's files")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: a SQLite file under `home`"
    )
    temporal_address: str | None = Field(
        None, description="host:port of a Temporal frontend; unset means the embedded dev server"
    )
    temporal_namespace: str = "default"
    task_queue: str = "crmflow"
    temporal_tls: bool = Field(False, description="Use TLS to reach Temporal")
    temporal_tls_client_cert: Path | None = None
    temporal_tls_client_key: Path | None = None
    temporal_tls_server_root_ca: Path | None = None
    temporal_tls_server_name: str | None = None
    temporal_api_key: str | None = None
    embedded_port: int = Field(7233, description="gRPC port of the embedded dev server")
    embedded_ui_port: int = Field(8233, description="Web UI port of the embedded dev server")
    default_phone_region: str = Field(
        "CN", description="ISO region for phone numbers written without a country code"
    )
    import_chunk_size: int = Field(5000, ge=1, le=100_000)

    @field_validator("default_phone_region")
    @classmethod
    def _upper_region(cls, v: str) -> str:
        if len(v) != 2 or not v.isalpha():
            raise ValueError("expected a two-letter ISO region code such as CN or US")
        return v.upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=_toml_file()),
        )

    @property
    def embedded(self) -> bool:
        """True when crmflow starts its own Temporal dev server."""
        return self.temporal_address is None

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'crmflow.db').resolve()}"

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.embedded_port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

"""PostgreSQL (or TimescaleDB) settings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings

from connectors.settings import CONFIG, NonBlank


class PostgresSettings(BaseSettings):
    model_config = CONFIG

    database_url: NonBlank = Field("postgresql://postgres@127.0.0.1:5432/tickstock", max_length=4096)

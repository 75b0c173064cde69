"""PostgreSQL (or TimescaleDB) settings."""

from __future__ import annotations

from typing import Annotated

from psycopg.conninfo import conninfo_to_dict
from pydantic import AfterValidator, Field
from pydantic_settings import BaseSettings

from connectors.settings import CONFIG, NonBlank

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/tickstock"


def _database_url(value: str) -> str:
    try:
        conninfo_to_dict(value)
    except Exception:  # noqa: BLE001 - psycopg's message may quote the URL (and its password)
        raise ValueError("is not a PostgreSQL connection string or URL") from None
    return value


DatabaseUrl = Annotated[NonBlank, AfterValidator(_database_url)]


class PostgresSettings(BaseSettings):
    model_config = CONFIG

    database_url: DatabaseUrl = Field(DEFAULT_URL, max_length=4096, repr=False)

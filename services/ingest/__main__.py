"""`python -m services.ingest`: run the ingest API with settings from the environment."""

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from shared.http import serve

if __name__ == "__main__":
    settings = IngestSettings()
    serve(create_app(settings), service="ingest", host=settings.ingest_host,
          port=settings.ingest_port, settings=settings)

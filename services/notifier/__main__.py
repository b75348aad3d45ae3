"""`python -m services.notifier`: run the notifier with settings from the environment."""

from services.notifier.app import create_app
from services.notifier.settings import NotifierSettings
from shared.http import serve

if __name__ == "__main__":
    settings = NotifierSettings()
    serve(create_app(settings), service="notifier", host=settings.notifier_host,
          port=settings.notifier_port, settings=settings)

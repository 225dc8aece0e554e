"""The test server as a Django app: its login template, and the OP session ids that follow
logins and logouts."""

from django.apps import AppConfig


class OAuthServerConfig(AppConfig):
    name = "tests.support.oauth_server"
    label = "fluxgate_test_as"

    def ready(self) -> None:
        from tests.support.oauth_server import sessions

        sessions.connect_signals()

"""A django-oauth-toolkit authorization server for tests, run as a subprocess by
`tests.support.authserver.DjangoAuthServer` (``python -m tests.support.oauth_server DIR``)."""

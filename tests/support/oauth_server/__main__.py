"""Run the test authorization server: ``python -m tests.support.oauth_server DATA_DIR``.

DATA_DIR/config.json names the clients to register and the server's options. The runner binds 127.0.0.1:0 first (no
race for a free port), migrates the SQLite database in DATA_DIR, registers the clients, and
only then writes DATA_DIR/server.json ({"port", "pid"}) and starts answering.
"""

from __future__ import annotations

import json
import os
import re
import socketserver
import sys
import time
from pathlib import Path

_SECRET_PARAMS = re.compile(r"\b(id_token_hint|code|token|refresh_token|logout_token)=[^&\s]*")


def main(argv: list[str]) -> int:
    """Set up and serve until killed."""
    started = time.monotonic()
    data_dir = Path(argv[0]).resolve()
    config = json.loads((data_dir / "config.json").read_text())

    # Django's own development server classes: threaded, HTTP/1.1 keep-alive, as runserver.
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class Server(ThreadedWSGIServer):
        def server_bind(self) -> None:
            # HTTPServer.server_bind would look the name up with getfqdn(): a DNS query.
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = self.server_address[:2]
            self.setup_environ()

    class RequestHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args) -> None:
            # The request line goes to the log: tokens in its query (id_token_hint at
            # the logout endpoint) never do.
            if args and isinstance(args[0], str):
                args = (_SECRET_PARAMS.sub(r"\1=[redacted]", args[0]), *args[1:])
            super().log_message(format, *args)

    httpd = Server(("127.0.0.1", 0), RequestHandler)
    port = httpd.server_address[1]
    os.environ["FLUXGATE_TEST_AS_DATA_DIR"] = str(data_dir)
    os.environ["FLUXGATE_TEST_AS_ISSUER"] = f"http://127.0.0.1:{port}/o"
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.support.oauth_server.settings"

    import django

    django.setup()
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application

    call_command("migrate", verbosity=0, interactive=False)
    migrated = time.monotonic()
    from tests.support.oauth_server import clients

    for client in config["clients"]:
        clients.register(client)

    httpd.set_app(get_wsgi_application())
    info = {"port": port, "pid": os.getpid(), "migrate_s": round(migrated - started, 3),
            "setup_s": round(time.monotonic() - started, 3)}
    tmp = data_dir / "server.json.tmp"
    tmp.write_text(json.dumps(info))
    tmp.replace(data_dir / "server.json")  # whole or absent: the handle polls for it
    print(f"authorization server on http://127.0.0.1:{port} ({info})", flush=True)
    httpd.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

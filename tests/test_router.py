"""Router: longest prefix on segment boundaries."""

from fluxgate.proxy.router import Router


def make(*prefixes):
    return Router((p, p) for p in prefixes)


def test_longest_prefix_wins_on_segment_boundaries():
    router = make("/api", "/api/admin", "/api/admin/users", "/static/")
    assert router.match(b"/api") == "/api"
    assert router.match(b"/api/") == "/api"
    assert router.match(b"/api/x/y") == "/api"
    assert router.match(b"/api/admin") == "/api/admin"
    assert router.match(b"/api/admin/") == "/api/admin"
    assert router.match(b"/api/admin/users/7") == "/api/admin/users"
    assert router.match(b"/api/administrator") == "/api"
    assert router.match(b"/apix") is None
    assert router.match(b"/static/app.js") == "/static/"
    assert router.match(b"/static") == "/static/"
    assert router.match(b"/") is None


def test_root_route_catches_everything_else():
    router = make("/", "/api")
    assert router.match(b"/api/x") == "/api"
    assert router.match(b"/anything/else") == "/"
    assert router.match(b"/") == "/"


def test_empty_table():
    assert make().match(b"/x") is None

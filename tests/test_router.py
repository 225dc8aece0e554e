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


def test_paths_longer_and_shorter_than_every_prefix():
    # The matcher skips candidates longer than the longest prefix without looking them up.
    router = make("/", "/ab", "/abc/de")
    assert router.match(b"/abc/de/f/g/h") == "/abc/de"
    assert router.match(b"/abc/def/g") == "/"
    assert router.match(b"/ab/cdefgh/i") == "/ab"
    assert router.match(b"/abcdefgh") == "/"
    assert router.match(b"/a") == "/"
    assert make("/ab").match(b"/abcdefgh/") is None

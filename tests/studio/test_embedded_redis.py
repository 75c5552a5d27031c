import redis

from studio.redis_embedded import EmbeddedRedis


def test_embedded_redis_is_a_real_server_that_stores_and_stops(tmp_path):
    server = EmbeddedRedis(tmp_path).start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("persona", "ada")
        assert client.get("persona") == b"ada"
        assert "redis_version" in client.info("server")
    finally:
        server.stop()
    assert not server.is_up()


def test_starting_twice_reuses_the_running_server(tmp_path):
    first = EmbeddedRedis(tmp_path).start()
    try:
        second = EmbeddedRedis(tmp_path).start()
        assert second.process is None
        assert second.is_up()
    finally:
        first.stop()


def test_a_folder_too_deep_for_a_unix_socket_still_gets_a_server(tmp_path):
    deep = tmp_path / ("a-long-folder-name-" * 6) / "var" / "redis"
    assert len(str(deep / "redis.sock")) > 108  # past Linux's sun_path
    server = EmbeddedRedis(deep).start()
    try:
        assert len(str(server.socket_path)) < 100
        assert EmbeddedRedis(deep).socket_path == server.socket_path
        assert EmbeddedRedis(deep).is_up()
    finally:
        server.stop()
    assert not server.socket_path.exists()

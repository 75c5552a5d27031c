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

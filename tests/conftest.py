import signal

import pytest

from pagesync.config import Settings

from .helpers import DedicatedRedis, RedisServer, Stack


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(request, tmp_path):
    """Run a test on both queue backends (Redis: a real redis-server on a free port)."""
    if request.param == "sqlite":
        return "sqlite"
    return request.getfixturevalue("queue_url_redis")


@pytest.fixture
def queue_url_redis(redis_server):
    """The URL of an emptied database of the redis-server (one per xdist process)."""
    import redis
    redis.Redis.from_url(redis_server.url).flushdb()
    return redis_server.url


def make_stack(tmp_path, queue: str = "sqlite", **settings) -> Stack:
    s = Settings(db=str(tmp_path / "pagesync.db"), queue=queue, **settings)
    return Stack(settings=s, tmp=tmp_path)


@pytest.fixture
def stack_factory(tmp_path):
    made = []

    def factory(queue: str = "sqlite", **settings) -> Stack:
        st = make_stack(tmp_path, queue, **settings)
        made.append(st)
        return st

    yield factory
    for st in made:
        st.stop()


@pytest.fixture
def stack(stack_factory):
    """A running server (SQLite queue, no worker yet) and its Stack."""
    st = stack_factory()
    st.start_server()
    return st


@pytest.fixture
def dedicated_redis(tmp_path):
    """A started redis-server of the test's own, to stop, pause (SIGSTOP) or restart;
    resumed and stopped after the test whatever it did to it."""
    server = DedicatedRedis(tmp_path)
    server.start()
    yield server
    if server.proc is not None:
        server.proc.send_signal(signal.SIGCONT)
    server.stop()

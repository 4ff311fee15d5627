"""The README's recipes (Flask, Falcon, Django, a TLS proxy, gunicorn, Starlette, FastAPI) run as
the README has them.

Each recipe's text is taken from the README (``tests.test_readme.recipes``) and run
against the real framework, in a temp directory (its ``sessions.db`` goes there),
with ``SESSION_KEYS`` set as a deployment would. Apps are served over real HTTP on
a free loopback port (the ASGI ones by a real uvicorn); gunicorn runs as a real process
with two workers.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

import pytest

import server
from generic_session import SQLiteStore
from tests.helpers import (
    LOOPBACK,
    POLL_INTERVAL,
    PROJECT_ROOT,
    UvicornServer,
    http_session,
    log_tail,
    stop_process,
)
from tests.test_readme import recipes

KEYS = "a long random secret,an older one"
DJANGO_SETTINGS = """\\
SECRET_KEY = "only for the test"
ROOT_URLCONF = "mysite.urls"
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
USE_TZ = True
"""
DJANGO_URLS = """\\
from django.urls import path

from mysite import views

urlpatterns = [
    path("set/<str:key>/<str:value>", views.set_value),
    path("get/<str:key>", views.get_value),
]
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A reader's project directory: the cwd, with SESSION_KEYS in the environment."""
    directory = tmp_path / "project"
    directory.mkdir()
    monkeypatch.chdir(directory)
    monkeypatch.setenv("SESSION_KEYS", KEYS)
    return directory


def run_recipe(name: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Execute the README's recipe *name* (in *namespace*, else a fresh one); return it."""
    language, code = recipes()[name]
    assert language == "python", name
    namespace = {"__name__": f"readme_{name.replace('-', '_')}"} if namespace is None else namespace
    exec(compile(code, f"README.md recipe {name}", "exec"), namespace)
    return namespace


@contextlib.contextmanager
def serve(app: Callable[..., Any]) -> Iterator[str]:
    """Serve *app* on a free loopback port (a thread per request, as server.py); yield its URL."""
    httpd = make_server(LOOPBACK, 0, app, server_class=server.ThreadingWSGIServer,
                        handler_class=server.QuietRequestHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": POLL_INTERVAL},
                              daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def assert_sets_then_fetches(url: str) -> None:
    with http_session() as http:
        stored = http.get(f"{url}/set/foo/bar", timeout=10)
        fetched = http.get(f"{url}/get/foo", timeout=10)
    assert (stored.status_code, stored.json()) == (200, "bar")
    assert (fetched.status_code, fetched.json()) == (200, "bar")
    assert "s.sig" in stored.headers["Set-Cookie"]  # signed with the keys from the environment


def break_the_store(store: SQLiteStore, project: Path) -> None:
    """Take the SQLite file's directory away and close the store's pooled connections:
    the next operation must open a connection, and fails to."""
    shutil.rmtree(project)
    store.close()


def test_the_flask_recipe_keeps_a_session_over_http_and_answers_503_without_its_store(
    project: Path,
) -> None:
    pytest.importorskip("flask")
    namespace = run_recipe("flask")

    with serve(namespace["app"]) as url:
        assert_sets_then_fetches(url)
        break_the_store(namespace["store"], project)
        with http_session() as http:
            down = http.get(f"{url}/get/foo", timeout=10)

    assert (down.status_code, down.text) == (503, "the session store is unavailable\n")


def test_flasks_test_client_goes_through_the_middleware(project: Path) -> None:
    pytest.importorskip("flask")
    namespace = run_recipe("flask")

    run_recipe("flask-test-client", namespace)  # its asserts hold

    assert namespace["client"].get("/get/foo").json == "bar"


def test_the_falcon_recipe_keeps_a_session_over_http_and_answers_503_without_its_store(
    project: Path,
) -> None:
    pytest.importorskip("falcon")
    namespace = run_recipe("falcon")

    with serve(namespace["app"]) as url:
        assert_sets_then_fetches(url)
        break_the_store(namespace["store"], project)
        with http_session() as http:
            down = http.get(f"{url}/get/foo", timeout=10)

    assert down.status_code == 503
    assert down.json()["description"] == "the session store is unavailable"


def test_the_django_recipe_keeps_a_session_over_http(
    project: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("django")
    package = project / "mysite"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(DJANGO_SETTINGS)
    (package / "urls.py").write_text(DJANGO_URLS)
    for name in ("django-wsgi", "django-views"):
        language, code = recipes()[name]
        first_line, _, _ = code.partition("\n")
        assert language == "python" and first_line.startswith("# mysite/"), name
        (project / first_line.removeprefix("# ")).write_text(code)  # the file it names
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)  # the recipe sets it
    try:
        application = importlib.import_module("mysite.wsgi").application
        with serve(application) as url:
            assert_sets_then_fetches(url)
    finally:
        for module in [name for name in sys.modules if name.split(".")[0] == "mysite"]:
            del sys.modules[module]


def test_the_tls_proxy_recipe_marks_the_cookie_secure_when_the_proxy_says_https(
    project: Path,
) -> None:
    pytest.importorskip("werkzeug")
    app = run_recipe("tls-proxy")["app"]

    with serve(app) as url, http_session() as http:
        proxied = http.get(url, headers={"X-Forwarded-Proto": "https"}, timeout=10)
        direct = http.get(url, timeout=10)

    assert proxied.status_code == direct.status_code == 200
    assert "; secure" in proxied.headers["Set-Cookie"]
    assert "; secure" not in direct.headers["Set-Cookie"]


def test_the_gunicorn_recipe_shares_a_session_between_two_workers(project: Path) -> None:
    pytest.importorskip("gunicorn")
    app_language, app_code = recipes()["gunicorn-app"]
    assert app_language == "python" and app_code.startswith("# sessions_app.py\n")
    (project / "sessions_app.py").write_text(app_code)
    shutil.copy(PROJECT_ROOT / "generic_session.py", project)  # "copy it into your project"
    command_language, command = recipes()["gunicorn-command"]
    argv = shlex.split(command)
    assert command_language == "sh" and argv[0] == "gunicorn"
    assert argv[argv.index("--workers") + 1] == "2"
    argv[argv.index("--bind") + 1] = f"{LOOPBACK}:0"  # a free port, read from its log

    log_path = project.parent / "gunicorn.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=project, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        url = wait_for_gunicorn(proc, log_path)
        answers = ask_until_both_workers_answer(url)
    finally:
        stop_process(proc)

    assert answers[0]["value"] == "bar"  # the set
    assert {answer["value"] for answer in answers[1:]} == {"bar"}, answers
    assert len({answer["worker"] for answer in answers}) == 2, answers


def wait_for_gunicorn(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 30) -> str:
    """Poll gunicorn's log until both workers have booted; return the URL it listens at."""
    deadline = time.monotonic() + timeout
    while True:
        log = log_path.read_text(errors="replace")
        listening = re.search(r"Listening at: (http://\S+)", log)
        if listening and len(re.findall(r"Booting worker with pid", log)) >= 2:
            return listening[1]
        assert proc.poll() is None, f"gunicorn exited: {log_tail(log_path)}"
        assert "Exception in worker process" not in log, log_tail(log_path, 60)
        assert time.monotonic() < deadline, f"gunicorn not ready: {log_tail(log_path)}"
        time.sleep(POLL_INTERVAL)


def ask_until_both_workers_answer(url: str, most: int = 400) -> list[dict[str, Any]]:
    """Set foo once, then read it with 4 concurrent clients until both workers have answered.

    Every request is a new connection (gunicorn's sync workers close each one),
    so the kernel hands them to whichever worker is free.
    """
    with http_session() as http:
        answers = [http.get(f"{url}/set/foo/bar", timeout=10).json()]
        cookies = http.cookies

    def read(_: int) -> dict[str, Any]:
        with http_session() as reader:
            reader.cookies.update(cookies)
            answer: dict[str, Any] = json.loads(reader.get(f"{url}/get/foo", timeout=10).text)
            return answer

    with ThreadPoolExecutor(max_workers=4) as pool:
        while len(answers) < most and len({a["worker"] for a in answers}) < 2:
            answers += pool.map(read, range(20))
        answers += pool.map(read, range(20))  # and on many more after that
    return answers


@pytest.mark.parametrize("name", ["starlette", "fastapi"])
def test_the_asgi_recipes_keep_a_session_under_uvicorn_and_answer_503_without_their_store(
    project: Path, serve_asgi: Callable[..., UvicornServer], name: str,
) -> None:
    pytest.importorskip(name)
    namespace = run_recipe(name)

    url = serve_asgi(namespace["app"]).url
    assert_sets_then_fetches(url)
    break_the_store(namespace["store"].store, project)  # the SQLiteStore in the ThreadedStore
    with http_session() as http:
        down = http.get(f"{url}/get/foo", timeout=10)

    assert down.status_code == 503
    assert down.text == "503 Service Unavailable: the session store is unavailable\n"

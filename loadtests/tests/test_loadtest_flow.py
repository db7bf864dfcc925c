"""The crowd's per-request path (``Flow.call``): what a visitor sends and what it reads back.

Locust monkey-patches the whole process when imported, so what needs it runs in a child.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from urr_loadtests.scenarios.common import ResultLog, answer_json


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"admitted": true, "token": "t"}', {"admitted": True, "token": "t"}),
        (b'  {"seats": []}\n', {"seats": []}),
        ('{"name": "Zo\u00eb"}'.encode(), {"name": "Zo\u00eb"}),
        (b"<!doctype html><html></html>", None),
        (b"", None),
        (None, None),
        (b"not json", None),
        (b"\xff\xfe{", None),
    ],
)
def test_an_answer_is_read_as_json_when_it_is_json(body: bytes | None, expected: Any) -> None:
    assert answer_json(body) == expected


#: An origin that sets a cookie on every answer and notes the cookies it was sent; a visitor
#: calls it three times (a new visitor on the same Locust user for the third).
VISITS = """
import json
from locust.contrib.fasthttp import FastHttpSession
from locust.event import EventHook
from gevent.pywsgi import WSGIServer
from urr_loadtests.scenarios.flow import Arrival, Flow

sent = []

def app(environ, start_response):
    sent.append(environ.get("HTTP_COOKIE"))
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Set-Cookie", "from-the-jar=1; Path=/")]
    )
    return [b'{"ok": true}']

server = WSGIServer(("127.0.0.1", 0), app, log=None)
server.start()
requests = []
event = EventHook()
event.add_listener(lambda **meta: requests.append([meta["name"], repr(meta["exception"])]))
session = FastHttpSession(f"http://127.0.0.1:{server.server_port}", request_event=event, user=None)
flow = Flow(session, "ev", deadline_s=30)
arrival = Arrival(user_id="u1", started_at=0.0)
answers = [flow.call("GET", "/first", "first", arrival)]
flow.cookies["access_token"] = "a"
answers.append(flow.call("POST", "/second", "second", arrival, body={"x": 1}))
answers.append(Flow(session, "ev", deadline_s=30).call("GET", "/third", "third", arrival))
server.stop()
print(json.dumps({"sent": sent, "requests": requests, "answers": answers,
                  "statuses": arrival.statuses}))
"""


def test_a_visitor_sends_only_the_cookies_it_chose(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", VISITS],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["sent"] == [None, "access_token=a", None]
    assert seen["answers"] == [[200, {"ok": True}]] * 3
    assert seen["requests"] == [["first", "None"], ["second", "None"], ["third", "None"]]
    assert seen["statuses"] == {"first 200": 1, "second 200": 1, "third 200": 1}


def test_the_result_log_keeps_every_line_whole(tmp_path: Path) -> None:
    path = tmp_path / "arrivals.jsonl"
    log = ResultLog(str(path))
    log.write({"user_id": "u1"})
    # Readable while the log is still open: each line is flushed as it is written.
    assert [json.loads(line)["user_id"] for line in path.read_text().splitlines()] == ["u1"]
    log.write({"user_id": "u2"})
    log.close()
    log.write({"user_id": "u3"})  # after a close, opened again and appended to
    log.close()
    assert [json.loads(line)["user_id"] for line in path.read_text().splitlines()] == [
        "u1",
        "u2",
        "u3",
    ]
    ResultLog(None).write({"user_id": "nowhere"})  # no file, nothing written

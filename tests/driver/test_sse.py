"""driver/sse.py: the text/event-stream parser (sans-I/O)."""

from driver.sse import SseParser


def test_events_comments_split_anywhere() -> None:
    raw = (b": wirepool listen\nretry: 1000\n\nid: e-1\nevent: notification\n"
           b'data: {"channel":"a","payload":"x","pid":7}\n\n: heartbeat\r\n\r\nevent: gap\ndata: one\ndata: two\n\n')
    for step in (1, 3, len(raw)):
        p = SseParser()
        out = []
        for i in range(0, len(raw), step):
            out += p.feed(raw[i:i + step])
        assert out == [("comment", "wirepool listen"),
                       ("event", {"id": "e-1", "event": "notification",
                                  "data": '{"channel":"a","payload":"x","pid":7}'}),
                       ("comment", "heartbeat"),
                       ("event", {"event": "gap", "data": "one\ntwo"})]

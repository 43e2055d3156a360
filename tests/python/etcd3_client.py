"""Drives a netsy node with the Python etcd3 client (0.12) and checks the
answers. Usage: etcd3_client.py HOST PORT. Exits non-zero on any mismatch."""

import sys
import threading

import etcd3


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    c = etcd3.client(host=host, port=port, timeout=10)

    c.put("/py/a", "1")
    c.put("/py/b", "2")
    value, meta = c.get("/py/a")
    assert value == b"1", value
    assert meta.version == 1 and meta.create_revision == 2 and meta.mod_revision == 2, meta

    listed = [(v, m.key) for v, m in c.get_prefix("/py/")]
    assert listed == [(b"1", b"/py/a"), (b"2", b"/py/b")], listed

    ok, _ = c.transaction(
        compare=[c.transactions.mod("/py/a") == 2],
        success=[c.transactions.put("/py/a", "3")],
        failure=[c.transactions.get("/py/a")],
    )
    assert ok
    ok, responses = c.transaction(
        compare=[c.transactions.mod("/py/a") == 2],
        success=[c.transactions.put("/py/a", "4")],
        failure=[c.transactions.get("/py/a")],
    )
    assert not ok
    assert responses[0][0][0] == b"3", responses

    lease = c.lease(60)
    assert lease.id > 0 and lease.id != 60
    c.put("/py/leased", "v", lease=lease)
    _, meta = c.get("/py/leased")
    assert meta.lease_id == lease.id

    events = []
    got_all = threading.Event()

    def on_event(response):
        for e in response.events:
            events.append((type(e).__name__, e.key, e.value))
        if len(events) >= 2:
            got_all.set()

    watch_id = c.add_watch_callback("/py/w", on_event)
    c.put("/py/w", "x")
    c.delete("/py/w")
    assert got_all.wait(20), events
    c.cancel_watch(watch_id)
    assert events == [("PutEvent", b"/py/w", b"x"), ("DeleteEvent", b"/py/w", b"")], events

    assert c.delete("/py/b")
    assert c.get("/py/b") == (None, None)
    status = c.status()
    assert status.version == "3.5.21", status.version
    members = list(c.members)
    assert len(members) == 1, members
    print("etcd3 client: all checks passed")


if __name__ == "__main__":
    main()

"""Interop flow driven by matrix-nio (Debian's python3-matrix-nio).

Usage: nio_flow.py HOMESERVER_URL RUN_ID
Exits 0 and prints "NIO FLOW OK" when every step behaved as the spec says;
otherwise prints the failing step and exits 1.
"""
import asyncio
import sys

from nio import (
    AsyncClient,
    JoinResponse,
    LoginResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomMessagesResponse,
    RoomSendResponse,
    SyncResponse,
)


def fail(step, resp):
    print(f"FAIL {step}: {resp!r}")
    sys.exit(1)


async def main(url, run_id):
    alice_name, bob_name = f"alice{run_id}", f"bob{run_id}"
    password = "correct horse battery staple"

    reg_a = AsyncClient(url, alice_name)
    resp = await reg_a.register(alice_name, password, "nio register")
    if not isinstance(resp, RegisterResponse):
        fail("register alice", resp)
    await reg_a.close()

    bob = AsyncClient(url, bob_name)
    resp = await bob.register(bob_name, password, "nio bob")
    if not isinstance(resp, RegisterResponse):
        fail("register bob", resp)

    alice = AsyncClient(url, alice_name)
    resp = await alice.login(password, device_name="nio alice")
    if not isinstance(resp, LoginResponse):
        fail("login alice", resp)
    if not alice.user_id.startswith(f"@{alice_name}:"):
        fail("login alice user_id", alice.user_id)

    resp = await alice.room_create(name="nio room", topic="interop")
    if not isinstance(resp, RoomCreateResponse):
        fail("create room", resp)
    room_id = resp.room_id

    resp = await alice.room_invite(room_id, bob.user_id)
    if not isinstance(resp, RoomInviteResponse):
        fail("invite bob", resp)

    resp = await bob.sync(timeout=5000)
    if not isinstance(resp, SyncResponse):
        fail("bob sync (invite)", resp)
    if room_id not in resp.rooms.invite:
        fail("bob sees invite", resp.rooms.invite)

    resp = await bob.join(room_id)
    if not isinstance(resp, JoinResponse):
        fail("bob join", resp)

    sent = []
    for i in range(5):
        resp = await alice.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": f"hello {i}"}
        )
        if not isinstance(resp, RoomSendResponse):
            fail(f"alice send {i}", resp)
        sent.append(resp.event_id)

    resp = await bob.sync(timeout=5000, since=bob.next_batch)
    if not isinstance(resp, SyncResponse):
        fail("bob sync (messages)", resp)
    room = resp.rooms.join.get(room_id)
    if room is None:
        fail("bob sync has joined room", resp.rooms.join)
    got = [e.event_id for e in room.timeline.events if getattr(e, "body", "").startswith("hello ")]
    if got != sent:
        fail("bob sync timeline order", (got, sent))
    if room_id not in bob.rooms or bob.rooms[room_id].display_name != "nio room":
        fail("bob room name from state", bob.rooms.get(room_id))

    resp = await bob.room_messages(room_id, start=bob.next_batch, limit=20)
    if not isinstance(resp, RoomMessagesResponse):
        fail("bob /messages", resp)
    back = [e.event_id for e in resp.chunk if getattr(e, "body", "").startswith("hello ")]
    if back != list(reversed(sent)):
        fail("bob /messages order", (back, sent))

    for c in (alice, bob):
        await c.close()
    print("NIO FLOW OK")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
